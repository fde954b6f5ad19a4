"""A bounded coverage-guided fuzzing session of the decoder (atheris), run in CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.fuzz.seed_corpus import seeds

ROOT = Path(__file__).resolve().parents[2]
RUNS = 500_000


def test_decoder_survives_bounded_fuzzing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, data in seeds().items():
        (corpus / name).write_bytes(data)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.fuzz_wire",
            f"-runs={RUNS}",
            "-max_total_time=120",
            "-rss_limit_mb=1024",
            "-timeout=10",
            "-max_len=4096",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    # libFuzzer reports on stderr: a crash, an uncaught exception, a timeout or OOM exits non-zero.
    assert result.returncode == 0, result.stderr[-4000:]
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done, result.stderr[-2000:]
    print(f"atheris: {done.group(0)}; {result.stderr.strip().splitlines()[-1]}")
