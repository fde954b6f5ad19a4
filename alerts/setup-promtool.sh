#!/bin/sh
# Unpacks promtool (and the prometheus server binary) from Debian's
# `prometheus` package into .cache/debian-tools/ without installing the
# package: its postinst would start a daemon. Idempotent; prints the path of
# promtool on stdout, everything else goes to stderr.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/debian-tools"
promtool="$dest/usr/bin/promtool"

if [ -x "$promtool" ] && "$promtool" --version >/dev/null 2>&1; then
    echo "$promtool"
    exit 0
fi

debs="$dest/debs"
mkdir -p "$debs"
cd "$debs"
rm -f prometheus_*.deb
if ! apt-get download prometheus >&2; then
    # A fresh machine may have no package lists yet.
    apt-get update >&2
    apt-get download prometheus >&2
fi
dpkg -x prometheus_*.deb "$dest"
"$promtool" --version >&2
echo "$promtool"
