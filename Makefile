# The two commands of the README's quick start: `make run` and `make test`.
.PHONY: run test setup lint

setup:
	./scripts/setup.sh

run: setup
	.venv/bin/vaultpbx run -c configs/default.yaml

test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest -q tests
