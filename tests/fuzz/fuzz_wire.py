"""Coverage-guided fuzzing of the netlink decoder with atheris (libFuzzer).

Property: on any bytes, decoding a reply either yields records or raises the
project's own ``DecodeError``; nothing else escapes, nothing hangs. Run directly:

    .venv/bin/python -m tests.fuzz.fuzz_wire -runs=200000 -max_total_time=60 -rss_limit_mb=512 -timeout=5

``tests/fuzz/test_atheris.py`` runs a bounded session in CI. The seed corpus is a
set of well-formed kernel-layout replies, so the fuzzer starts from deep inside
the format instead of from random noise.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from exporter.kernel.netlink import DecodeError
    from tests.fuzz.decode import decode_everything


def decode_all(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_everything(data)


def main() -> None:
    atheris.Setup(sys.argv, decode_all)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
