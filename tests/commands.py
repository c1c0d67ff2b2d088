"""The console scripts (`rastau`, `rastau-enrol`) run in the test's own process, as an operator's shell would run
them: the environment holds only what the test gives (every RASTAU_ variable of the developer's removed), and
the answer is the exit status with stdout and stderr apart, as from a process. Starting Python and importing
the project for each command cost seconds of CPU per call, and coverage never saw the commands' code. One test
per script still runs the installed script as a real process (tests/server/test_real_server.py: `rastau`,
tests/face/test_bulk_enrol.py: `rastau-enrol`)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import traceback
from functools import partial
from pathlib import Path

import click
from click.testing import CliRunner

from tests.conftest import log_as_the_product

ROOT = Path(__file__).resolve().parents[1]


def run_command(command: click.Command, prog: str, env: dict[str, str], *args: str,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``prog args…`` with ``env`` as its RASTAU_ settings, in ``cwd`` (where a ``.env`` would be read; the
    project's root by default). Call from synchronous code (the commands run their own event loop); from a
    coroutine, use :func:`run_command_async`."""
    unset: dict[str, str | None] = {name: None for name in os.environ if name.startswith("RASTAU_")}
    with contextlib.chdir(cwd or ROOT):
        done = CliRunner().invoke(command, list(args), prog_name=prog, env={**unset, **env})
    stderr = done.stderr
    if done.exception is not None and not isinstance(done.exception, SystemExit):  # as Python prints a crash
        stderr += "".join(traceback.format_exception(done.exception))
    log_as_the_product()  # the command pointed the logs at its own captured stderr, gone now
    return subprocess.CompletedProcess([prog, *args], done.exit_code, done.stdout, stderr)


async def run_command_async(command: click.Command, prog: str, env: dict[str, str], *args: str,
                            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """:func:`run_command` from a coroutine: in a thread, as the command starts an event loop of its own."""
    return await asyncio.to_thread(partial(run_command, command, prog, env, *args, cwd=cwd))
