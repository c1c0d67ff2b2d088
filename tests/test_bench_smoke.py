"""The benchmarks in smoke mode (tiny sizes): they must keep running, and their own checks must hold —
identical face decisions, every code verified, no message lost or duplicated, digest equal to its baseline, each
red-flag rule answering what its hand-written query answers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import pg_or_skip

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)  # a minute or less alone; each benchmark process starts servers of its own
@pytest.mark.parametrize("name", ["face", "face_load", "liveness", "codes", "dispatcher", "digest", "flags", "soak"])
def test_benchmark_runs_in_smoke_mode(name, tmp_path):
    if name in ("codes", "digest", "flags"):
        pg_or_skip()
    results_before = (ROOT / "bench" / "RESULTS.md").read_bytes()
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--workdir", str(tmp_path), name], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## " in done.stdout and "|" in done.stdout  # a section with its table was printed
    assert "DIFFERENT on" not in done.stdout
    assert (ROOT / "bench" / "RESULTS.md").read_bytes() == results_before  # smoke runs never overwrite figures
