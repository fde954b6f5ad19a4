"""Command line of the VM harness.

python -m tests.vm setup [--kernel K ...] [--refresh]  install/fetch what the VMs need (cached)
python -m tests.vm setup --tools-only                  only the host packages and tools (host OVSDB tests)
python -m tests.vm run --kernel 6.12 -- CMD...         boot, run CMD in the checkout, exit with its status
python -m tests.vm suite [--kernel K ...] [-- PYTEST_ARGS]  run tests/kernel in each kernel
python -m tests.vm capture [--kernel K ...]            refresh tests/fixtures/kernel/<K>/
python -m tests.vm capture-flows [--kernel K ...]      refresh tests/fixtures/kernel/<K>/flows/
python -m tests.vm demo [--port 9310]                  6.12 with traffic, exporter on 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import signal
import sys

from .paths import KERNEL_SERIES


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Unwind normally, so that a running guest's QEMU is killed on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(prog="python -m tests.vm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("setup", "suite", "capture", "capture-flows"):
        s = sub.add_parser(name)
        s.add_argument("--kernel", action="append", choices=KERNEL_SERIES, help="repeatable; default all")
        if name == "setup":
            s.add_argument("--refresh", action="store_true", help="re-resolve and re-fetch everything")
            s.add_argument("--tools-only", action="store_true", help="no kernels: what host tests need")
        if name == "suite":
            s.add_argument("--skip-setup", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--kernel", default="6.12", choices=KERNEL_SERIES)
    r.add_argument("--timeout", type=float, default=900.0)
    r.add_argument("--quiet", action="store_true", help="do not echo the serial console")
    d = sub.add_parser("demo")
    d.add_argument("--port", type=int, default=9310)
    args = p.parse_args(argv)
    kernels = getattr(args, "kernel", None) or list(KERNEL_SERIES)

    if args.cmd == "setup":
        from .provision import provision

        provision([] if args.tools_only else kernels, refresh=args.refresh)
        return 0
    if args.cmd == "suite":
        from .suite import main_suite

        return main_suite(kernels, rest, skip_setup=args.skip_setup)
    if args.cmd == "capture":
        from .suite import main_capture

        return main_capture(kernels)
    if args.cmd == "capture-flows":
        from .suite import main_capture

        return main_capture(kernels, module="tests.kernel.capture_flows", subdir="flows")
    if args.cmd == "demo":
        from .demo import host_main

        return host_main(args.port)
    if not rest:
        p.error("run needs a command after --")
    from .qemu import VMError, run_in_vm

    try:
        res = run_in_vm(rest, args.kernel, timeout=args.timeout, stream=not args.quiet)
    except VMError as e:
        print(f"[vm] {e}", file=sys.stderr)
        return 125
    if args.quiet:
        sys.stdout.write(res.output)
    print(
        f"[vm] exit {res.returncode}; boot {res.boot_seconds:.1f}s, command {res.command_seconds:.1f}s; "
        f"results in {res.results_dir}",
        file=sys.stderr,
    )
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
