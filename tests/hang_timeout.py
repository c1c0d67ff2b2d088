"""How a test that outlives its time limit is ended (issue 15): faulthandler's watchdog writes every thread's stack
to the stderr pytest started with and ends the process, so a hang is a failure named by its test, never a stall.

pytest-timeout decides when (120 s from pyproject, or a test's own ``@pytest.mark.timeout``); this plugin replaces
how, for its "thread" method. Its "signal" method raises from a SIGALRM handler, and an exception raised while a
weakref callback or a ``__del__`` runs is printed as "ignored" and dropped: a full run's worker went on for ten
minutes after its timeout fired inside one. Its own "thread" method needs the GIL to act (C code that holds it, a
runaway regex, never lets it) and writes the stacks to the terminal, which under pytest-xdist is a worker's
/dev/null. faulthandler's watchdog is a C thread: it needs no GIL, writes to a copy of stderr taken before any
capture, and calls ``_exit(1)``; pytest-xdist reports "worker crashed while running <test>", starts a new worker
and the run goes on. The cost: a hung test's own output and its worker's coverage data are lost with the process.
"""
from __future__ import annotations

import faulthandler
import os

import pytest
from pytest_timeout import is_debugging

_stderr = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_stderr] = os.dup(2)  # capture is not running yet: this is the terminal (or the worker's stderr)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _stderr in config.stash:
        os.close(config.stash[_stderr])


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: a run with -p no:timeout has no such hook
def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    if settings.method != "thread":
        return None  # a test that asks for another method gets pytest-timeout's own
    if not settings.disable_debugger_detection and is_debugging():
        return True  # as pytest-timeout: no limit under a debugger (entering pdb later cancels it too)
    faulthandler.dump_traceback_later(settings.timeout, exit=True, file=item.config.stash[_stderr])
    item.cancel_timeout = faulthandler.cancel_dump_traceback_later  # what pytest-timeout's cancel hook calls
    return True
