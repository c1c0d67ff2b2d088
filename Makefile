# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
.PHONY: run test bootstrap security bench
export RASTAU_MODE ?= dev

bootstrap:
	@scripts/bootstrap

run: bootstrap
	.venv/bin/rastau migrate
	.venv/bin/rastau-server

test: bootstrap
	.venv/bin/python -m pytest $(PYTEST_ARGS)

security: bootstrap
	scripts/security-check

bench: bootstrap
	.venv/bin/python -m bench $(BENCH_ARGS)
