"""Coverage-guided fuzzing of the netlink decoder with atheris (libFuzzer).

Property: on any bytes, decoding a reply either yields records or raises the
project's own ``DecodeError``; nothing else escapes, nothing hangs. Run directly:

    .venv/bin/python tests/fuzz/fuzz_wire.py -runs=200000 -max_total_time=60 -rss_limit_mb=512 -timeout=5

``tests/fuzz/test_atheris.py`` runs a bounded session in CI. The seed corpus is a
set of well-formed kernel-layout replies, so the fuzzer starts from deep inside
the format instead of from random noise.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from exporter import wire


def decode_all(data: bytes) -> None:
    try:
        for message in wire.iter_messages(data):
            if message.type == 0x1A:
                wire.decode_datapath(data, message)
            elif message.type in (wire.NLMSG_DONE, wire.NLMSG_ERROR):
                wire.error_code(data, message)
            else:
                wire.decode_vport(data, message)
    except wire.DecodeError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, decode_all)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
