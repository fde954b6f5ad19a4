"""The demo: kernel 6.12 under QEMU with a sample topology and steady traffic, the exporter
inside, its port forwarded to 127.0.0.1 on the host. Runs until Ctrl-C.

    python -m tests.vm demo [--port 9310]     (host; `make demo`)
    python -m tests.vm.demo --guest PORT      (what the guest runs)

The guest's only network card is QEMU user networking restricted to that one forwarded port.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from .paths import REPO_ROOT


def host_main(port: int) -> int:
    from .provision import provision
    from .qemu import VMError, run_in_vm

    provision(["6.12"])
    print(
        f"[demo] booting 6.12; the exporter will answer on http://127.0.0.1:{port}/metrics "
        "in about a minute. Ctrl-C stops the VM.",
        flush=True,
    )
    try:
        run_in_vm(
            ["python", "-m", "tests.vm.demo", "--guest", str(port)],
            "6.12",
            timeout=7 * 24 * 3600,
            label="demo",
            forward_port=port,
        )
    except KeyboardInterrupt:
        print("\n[demo] stopped", flush=True)
        return 0
    except VMError as e:
        print(f"[demo] {e}", file=sys.stderr)
        return 1
    return 0


def guest_main(port: int) -> int:
    """Build the topology, start traffic and the exporter, then wait to be killed."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.kernel.ovsnl import OvsNetlink
    from tests.kernel.procs import Exporter
    from tests.kernel.topology import STANDARD, Topology, background_ping, send_frames, standard_topology

    nl = OvsNetlink()
    listener = OvsNetlink()
    with standard_topology(nl):
        upcalls = Topology(nl)
        upcalls.add_datapath("ovs-u")
        upcalls.add_veth("ovs-u", "vu0", upcall_pid=listener.portid)
        upcalls.add_veth("ovs-u", "vu1", upcall_pid=0)
        pingers = [
            background_ping(STANDARD[0], size=1000, interval=0.2),
            background_ping(STANDARD[1], size=200, interval=0.5),
        ]

        def trickle() -> None:
            # Misses on ovs-u: upcalls delivered on vu0, lost on vu1.
            while True:
                send_frames("vu0p", 3)
                send_frames("vu1p", 1)
                listener.sock.setblocking(False)
                try:
                    while listener.sock.recv(1 << 16):
                        pass
                except BlockingIOError:
                    pass
                time.sleep(1)

        threading.Thread(target=trickle, daemon=True).start()
        log_dir = Path(os.environ.get("OVS_VM_RESULTS", "/tmp"))
        exporter = Exporter(port, log_dir, host="", name="exporter-demo")
        print(
            f"[demo] exporter up: on the host, curl http://127.0.0.1:{port}/metrics "
            f"(log: {exporter.log}). Ctrl-C to stop.",
            flush=True,
        )
        try:
            exporter.proc.wait()
        finally:
            for p in pingers:
                p.terminate()
    return 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--guest":
        sys.exit(guest_main(int(sys.argv[2])))
    sys.exit(__doc__)
