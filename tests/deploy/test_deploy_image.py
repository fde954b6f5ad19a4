"""The container image, built with podman from this checkout and run the way the Helm chart runs it.

`tests/image.py` builds the Containerfile on a Debian base made from the machine's own apt sources
(no registry is reachable in CI) in a private podman store. The test turns the chart's DaemonSet
(default values) into podman flags: the host network, the container's arguments, the pod's and the
container's security contexts, the ConfigMap and the /tmp emptyDir as mounts. A security setting
or volume it does not know fails the test rather than being dropped, so the chart cannot gain one
that this run does not apply. It scrapes the container, reads from /proc what the kernel says about
the container's process (uid and gid, capabilities, no_new_privs, seccomp, a read-only root), and
stops it with SIGTERM as the kubelet does.

It runs when CI is set (as `.ci/run` does) or OVS_TEST_IMAGE=1, and skips otherwise, saying so.
Cost in CI: about 30 s of apt-get (podman, mmdebstrap, runc) and 45 s for the base tarball, both
once per machine (the tarball is kept in .cache/container/), then about 30 s per run (import,
build, run).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from conftest import Rendered, missing_tool

from tests import image as image_build

Render = Callable[[dict[str, Any]], Rendered]


@pytest.fixture(scope="module")
def image() -> Iterator[image_build.Image]:
    # A minute of CPU on a shared 2-core machine: CI (make test) runs it; elsewhere it is asked for.
    if not (os.environ.get("CI") or os.environ.get("OVS_TEST_IMAGE")):
        pytest.skip("builds a container image: runs in CI (CI=true) or with OVS_TEST_IMAGE=1")
    missing = image_build.missing_host_packages()
    if missing and (shutil.which("apt-get") is None or os.geteuid() != 0):
        missing_tool(f"host packages {missing}", "apt-get install " + " ".join(image_build.HOST_PACKAGES))
    with image_build.built_image() as built:
        yield built


def _exporter_container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == "exporter"]
    return container


def _user(context: dict[str, Any], flags: list[str]) -> None:
    if "runAsUser" in context:
        group = f":{context['runAsGroup']}" if "runAsGroup" in context else ""
        flags[:] = [f for f in flags if not f.startswith("--user=")]
        flags.append(f"--user={context['runAsUser']}{group}")


def podman_flags(rendered: Rendered, workdir: Path) -> tuple[list[str], list[str]]:
    """The chart's DaemonSet as `podman run` flags, and the container's arguments."""
    pod = rendered.one("DaemonSet")["spec"]["template"]["spec"]
    container = _exporter_container(pod)
    flags: list[str] = []

    assert pod["hostNetwork"] is True, "the exporter must see the node's datapaths"
    flags.append("--network=host")
    assert not pod.get("hostPID") and not pod.get("hostIPC")  # podman's default: private ones

    pod_context = dict(pod.get("securityContext", {}))
    seccomp = pod_context.pop("seccompProfile", {"type": "RuntimeDefault"})
    assert seccomp == {"type": "RuntimeDefault"}, seccomp  # podman applies its default profile
    # runAsNonRoot makes the kubelet refuse a container that would run as root: podman has no
    # such check, so the test reads the process's uid from /proc instead.
    pod_context.pop("runAsNonRoot", None)
    _user(pod_context, flags)
    pod_context.pop("runAsUser", None)
    pod_context.pop("runAsGroup", None)
    assert not pod_context, f"pod securityContext settings this test does not apply: {pod_context}"

    context = dict(container.get("securityContext", {}))
    if context.pop("allowPrivilegeEscalation", True) is False:
        flags.append("--security-opt=no-new-privileges")
    assert context.pop("privileged", False) is False
    if context.pop("readOnlyRootFilesystem", False):
        # The chart gives /tmp an emptyDir and nothing else; podman would add tmpfs on /run too.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    context.pop("runAsNonRoot", None)
    _user(context, flags)
    context.pop("runAsUser", None)
    context.pop("runAsGroup", None)
    capabilities = context.pop("capabilities", {})
    flags += [f"--cap-drop={c}" for c in capabilities.pop("drop", [])]
    flags += [f"--cap-add={c}" for c in capabilities.pop("add", [])]
    assert not capabilities, f"capabilities settings this test does not apply: {capabilities}"
    assert not context, f"container securityContext settings this test does not apply: {context}"

    flags += [f"--env={e['name']}={e['value']}" for e in container.get("env", [])]

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            flags.append(f"--tmpfs={mount['mountPath']}")
        elif "configMap" in volume:
            (config_map,) = [
                d
                for d in rendered.of_kind("ConfigMap")
                if d["metadata"]["name"] == volume["configMap"]["name"]
            ]
            source = workdir / mount["name"]
            source.mkdir()
            for key, value in config_map["data"].items():
                (source / key).write_text(value, encoding="utf-8")
                (source / key).chmod(0o644)
            source.chmod(0o755)
            assert mount.get("readOnly"), mount
            flags.append(f"--volume={source}:{mount['mountPath']}:ro")
        else:
            pytest.fail(f"volume kind this test does not mount: {volume}")
    return flags, list(container["args"])


def _status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    return dict(re.findall(r"^(\w+):\s+(.*)$", text, re.MULTILINE))


def _root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


def test_image_runs_as_the_chart_runs_it(
    image: image_build.Image,
    render: Render,
    serving: Callable[..., AbstractContextManager[Any]],
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    port = free_port()
    rendered = render({"port": port})
    flags, args = podman_flags(rendered, tmp_path)
    assert flags.count("--network=host") == 1
    assert "--cap-drop=ALL" in flags
    assert "--security-opt=no-new-privileges" in flags
    assert "--read-only" in flags
    # The chart listens on every address of the node; here only loopback is used.
    args = [
        f"--web.listen-address=127.0.0.1:{port}" if a.startswith("--web.listen-address=") else a for a in args
    ]
    telemetry_path = next(a.split("=", 1)[1] for a in args if a.startswith("--web.telemetry-path="))

    user = image.podman("image", "inspect", "--format", "{{.Config.User}}", image.ref, capture=True).strip()
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"the image's USER {user!r} is not a numeric non-root uid"

    name = f"ovs-vport-exporter-test-{port}"
    command = ["podman", "run", "--rm", f"--name={name}", *flags, image.ref, *args]
    with serving(command, port, cwd=tmp_path, env=image.podman.env) as served:
        landing, _ = served.get("/")
        status, metrics = served.get(telemetry_path)
        pid = int(image.podman("inspect", "--format", "{{.State.Pid}}", name, capture=True))
        process = _status(pid)
        root_options = _root_mount_options(pid)
    assert landing == 200
    assert status == 200
    assert "\novs_up " in metrics
    assert 'ovs_exporter_build_info{version="' + image_build.version() + '"} 1' in metrics
    assert set(process["Uid"].split()) == {"65534"}, process["Uid"]
    assert set(process["Gid"].split()) == {"65534"}, process["Gid"]
    for capability_set in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(process[capability_set], 16) == 0, f"{capability_set} {process[capability_set]}"
    assert process["NoNewPrivs"] == "1"
    assert process["Seccomp"] == "2", "podman's default seccomp filter should apply"
    assert "ro" in root_options, root_options
    assert served.exit_code == 0, f"SIGTERM should end the container cleanly:\n{served.output}"


def test_config_mount_path_is_the_config_flag(render: Render, tmp_path: Path) -> None:
    """The flag the container gets names a file inside the ConfigMap's mount."""
    flags, args = podman_flags(render({}), tmp_path)
    config = PurePosixPath(next(a.split("=", 1)[1] for a in args if a.startswith("--config.file=")))
    mounts = [f.split(":")[1] for f in flags if f.startswith("--volume=")]
    assert str(config.parent) in mounts
