# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
.PHONY: run test demo bootstrap security bench
export RASTAU_MODE ?= dev

bootstrap:
	@scripts/bootstrap

run: bootstrap
	.venv/bin/rastau migrate
	.venv/bin/rastau-server

test: bootstrap
	.venv/bin/python -m pytest $(PYTEST_ARGS)

# The whole story in the terminal: real server and bot, a local Bot API stand-in, SQLite. DEMO_ARGS="--lang kk"
demo: bootstrap
	.venv/bin/python -m devkit.demo $(DEMO_ARGS)

security: bootstrap
	scripts/security-check

bench: bootstrap
	.venv/bin/python -m bench $(BENCH_ARGS)
