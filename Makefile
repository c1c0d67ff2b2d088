# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
.PHONY: run test test-fast lint demo bootstrap security bench
export RASTAU_MODE ?= dev

bootstrap:
	@scripts/bootstrap

run: bootstrap
	.venv/bin/rastau migrate
	.venv/bin/rastau-server

# Every test, with line coverage of core, server and bot printed at the end, in two runs of pytest-xdist (each
# worker its own databases, files and ports): first the `isolated` harnesses, one per core and nothing beside
# them (they live in $(ISOLATED), so only that folder is collected for them unless PYTEST_ARGS names tests: the
# whole tree costs each worker ~15 s of imports); then the rest on TEST_WORKERS workers, longest first. Three
# workers on two cores: the tests that wait in real time (Telegram's pace) leave CPU to spare. The second run runs
# even when the first failed; exit status 5 ("no test selected", e.g. by PYTEST_ARGS) is not a failure.
TEST_WORKERS ?= 3
ISOLATED = tests/reliability
COVERAGE = --cov=core --cov=server --cov=bot
test: bootstrap
	first=0; .venv/bin/python -m pytest -n 2 -m isolated $(COVERAGE) --cov-report= \
		$(PYTEST_ARGS) $(if $(PYTEST_ARGS),,$(ISOLATED)) || first=$$?; \
	.venv/bin/python -m pytest -n $(TEST_WORKERS) -m "not isolated" $(COVERAGE) --cov-append \
		--cov-report=term-missing:skip-covered $(PYTEST_ARGS) || [ $$? -eq 5 ] || exit 1; \
	[ $$first -eq 0 ] || [ $$first -eq 5 ]

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
