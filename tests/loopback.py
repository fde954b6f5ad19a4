"""Servers the tests and benchmarks run for real on the loopback interface.

``free_port`` gives one a port; ``prometheus`` runs a Prometheus (Debian's, unpacked into
``.cache/`` by the setup scripts) over a data directory with a configuration, ready when its
block starts and stopped when it ends. The rules tests run it over backfilled data, the series
benchmark over a live exporter.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the kernel's choice, given back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def prometheus(
    binary: Path,
    data: Path,
    workdir: Path,
    config_text: str,
    args: Sequence[str] = (),
    start_timeout: float = 30,
) -> Iterator[str]:
    """``binary`` with ``config_text`` (YAML, or JSON, which is YAML) on a free loopback port and
    its TSDB in ``data``, until the block exits; yields its URL once ``/-/ready`` answers.

    ``args``: more flags. Its log is ``workdir/prometheus.log``; a Prometheus that exits or is
    not ready within ``start_timeout`` seconds raises RuntimeError with the log's tail.
    """
    config = workdir / "prometheus.yml"
    config.write_text(config_text, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus did not start ({log_path}):\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
