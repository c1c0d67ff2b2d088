"""The benchmarks in smoke mode (tiny sizes): they must keep running, and their own checks must hold —
identical face decisions, every code verified, no message lost or duplicated, digest equal to its baseline, each
red-flag rule answering what its hand-written query answers, every export page verifying and listing the visits the
bare dump lists, every capture session through the socket a match."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import main as bench_main
from tests.conftest import pg_or_skip

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)  # a minute or less alone; several benchmarks start servers of their own
@pytest.mark.parametrize("name", ["face", "face_load", "liveness", "codes", "dispatcher", "digest", "flags",
                                  "export", "soak", "dashboard", "whatsapp"])
def test_benchmark_runs_in_smoke_mode(name, tmp_path, capsys):
    """``python -m bench --smoke NAME``, its main() in this process: the processes a benchmark starts are its
    own business, a Python start and the project's imports per benchmark were only the test's."""
    if name in ("codes", "digest", "flags", "dashboard"):
        pg_or_skip()
    results_before = (ROOT / "bench" / "RESULTS.md").read_bytes()
    assert bench_main(["--smoke", "--workdir", str(tmp_path), name]) == 0
    printed = capsys.readouterr().out
    assert "## " in printed and "|" in printed  # a section with its table was printed
    assert "DIFFERENT on" not in printed
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results_before  # smoke runs never overwrite figures
