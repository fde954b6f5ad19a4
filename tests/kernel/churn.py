"""Port and datapath churn on a thread of its own, for tests that scrape while the kernel changes."""

from __future__ import annotations

import threading
from types import TracebackType

from .ovsnl import VPORT_INTERNAL, OvsNetlink


class Churn:
    """Until the ``with`` block ends, in a loop: add ``ports`` internal vports named PREFIX0..
    to the datapath ``dp_ifindex``, create datapath PREFIX-dp with one port, delete them all."""

    def __init__(self, dp_ifindex: int, prefix: str, ports: int) -> None:
        self.dp_ifindex, self.prefix, self.ports = dp_ifindex, prefix, ports
        self.rounds = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        names = [f"{self.prefix}{i}" for i in range(self.ports)]
        try:
            with OvsNetlink() as sock:
                while not self._stop.is_set():
                    for name in names:
                        sock.new_vport(self.dp_ifindex, name, VPORT_INTERNAL)
                    dp = sock.new_datapath(f"{self.prefix}-dp")
                    sock.new_vport(dp, f"{self.prefix}x", VPORT_INTERNAL)
                    for name in names:
                        sock.del_vport(name)
                    sock.del_datapath(f"{self.prefix}-dp")
                    self.rounds += 1
        except BaseException as err:  # noqa: BLE001 - reported by the test's thread
            self.errors.append(err)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
