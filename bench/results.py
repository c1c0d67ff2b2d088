"""Writing figures to bench/RESULTS.md: one section per benchmark, replaced on each run, with the machine."""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import time
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
LIBRARIES = ("aiohttp", "aiogram", "SQLAlchemy", "aiosqlite", "asyncpg", "face-recognition", "dlib-bin",
             "opencv-python-headless", "numpy")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        memory = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except OSError:
        memory = "unknown memory"
    return f"{os.cpu_count()} cores, {cpu}, {memory}, Python {platform.python_version()}"


def versions() -> str:
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def write_section(name: str, body: str, *, smoke: bool) -> None:
    """Replace the section `name` in RESULTS.md (smoke runs print only: tiny sizes prove nothing)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = f"## {name}\n\n_{stamp}; {machine()}; {versions()}_\n\n{body.strip()}\n"
    print(section)
    if smoke:
        return
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by `make bench`.\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def interleaved(candidate, baseline, rounds: int) -> tuple[list[float], list[float]]:
    """Time two coroutines alternately, so machine noise hits both alike. Returns seconds per call."""
    ours, base = [], []
    for _ in range(rounds):
        for fn, sink in ((candidate, ours), (baseline, base)):
            t0 = time.perf_counter()
            await fn()
            sink.append(time.perf_counter() - t0)
    return ours, base


def median(values: list[float]) -> float:
    return statistics.median(values)
