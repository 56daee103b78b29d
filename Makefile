# The two commands of the README: `make lab` and `make test`. Both bootstrap themselves.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: lab test lint docs unit bench bootstrap clean

bootstrap:
	@bash scripts/bootstrap.sh all

lab:
	@bash scripts/bootstrap.sh venv
	$(PY) -m fournines lab

# The whole suite: lint and types, the API reference, then every test (real servers included).
test: bootstrap lint docs unit

lint:
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy src
	$(PY) scripts/unasync.py --check
	d=$$(mktemp -d) && $(PY) -m tests.test_readme --write $$d && $(VENV)/bin/mypy --config-file tests/typing/mypy.ini tests/typing/user_code.py $$d; s=$$?; rm -rf $$d; exit $$s

# The API reference (mkdocs + mkdocstrings) from the docstrings; any warning fails the build.
docs:
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir site

unit:
	$(PY) -m pytest -q

# Benchmarks against the peers (installs them, and wrk where permitted).
bench:
	@bash scripts/bootstrap.sh venv
	$(PY) -m pip install -q -e '.[bench]' 2>&1 | grep -v '^WARNING: Location' || true
	@command -v wrk >/dev/null || bash scripts/bootstrap.sh packages wrk:wrk || true
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
