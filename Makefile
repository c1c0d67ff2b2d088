# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
.PHONY: run test test-fast lint demo bootstrap security bench
export RASTAU_MODE ?= dev
# Python writes the bytecode it compiles (this machine's environment sets PYTHONDONTWRITEBYTECODE=1): without the
# cache every test worker, server and dispatcher process compiles the project and its test tools again (~2 s each).
unexport PYTHONDONTWRITEBYTECODE

bootstrap:
	@scripts/bootstrap

run: bootstrap
	.venv/bin/rastau migrate
	.venv/bin/rastau-server

# Every test, with line coverage of core, server and bot printed at the end, in one run of pytest-xdist on
# TEST_WORKERS workers (each its own databases, files and ports), longest first: the kill -9 crash harness starts at
# once beside the rest (its kills are paced by its dispatchers' own CPU time, so load does not starve it). Three
# workers on two cores, measured one after another on this machine: on the Intel host (2026-11-29) 2 workers 7:22,
# 3 workers 6:36, 4 workers 7:36; on the AMD EPYC host (2026-11-30) 3 workers 3:49, 4 workers 3:38, 5 workers 3:46.
# A fourth helps a little on the faster host and costs a minute on the slower one (its imports and contention).
# "worksteal": a worker that runs out of tests takes half of a busy worker's queue (the default hands each worker
# one fixed chunk of the longest-first order, so one worker got every slow test and ran them one after another
# while the others sat idle). Exit status 5 ("no test selected", e.g. by PYTEST_ARGS) is not a failure.
TEST_WORKERS ?= 3
COVERAGE = --cov=core --cov=server --cov=bot
test: bootstrap
	.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(COVERAGE) --cov-report=term-missing:skip-covered \
		$(PYTEST_ARGS) || [ $$? -eq 5 ]

# The inner loop, in under a minute: the unit tier (no processes started, no real-time waits, SQLite only; the
# real face pipeline in tests/face is left to `make test`).
test-fast: bootstrap
	.venv/bin/python -m pytest -n 2 -m "not slow" -k "not postgres" --ignore=tests/face $(PYTEST_ARGS)

# Static checks, each failing with the tool's own message: ruff's rules are in pyproject.toml [tool.ruff], the
# layering contracts (lint-imports) in [tool.importlinter], mypy's (strict) in [tool.mypy].
lint: bootstrap
	.venv/bin/ruff check core server bot devkit bench tests scripts
	.venv/bin/lint-imports
	.venv/bin/mypy

# The whole story in the terminal: real server and bot, a local Bot API stand-in, SQLite. DEMO_ARGS="--lang kk"
demo: bootstrap
	.venv/bin/python -m devkit.demo $(DEMO_ARGS)

security: bootstrap
	scripts/security-check

bench: bootstrap
	.venv/bin/python -m bench $(BENCH_ARGS)
