# Two commands work on a fresh machine: `make demo` and `make test`.
# Both create .venv and install everything on first use (torch's CPU wheel first,
# so pip never resolves a multi-GB CUDA build).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip --disable-pip-version-check -q
STAMP   = $(VENV)/.installed

.PHONY: setup test demo bench bench-full clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/data.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements/constraints.txt -e '.[dev]'
	$(PIP) install --no-deps -r requirements/data.txt
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench experiments examples
	$(VENV)/bin/mypy src
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/layerdrop demo

bench: $(STAMP)
	$(PY) bench/all.py

bench-full: $(STAMP)
	$(PY) bench/all.py --full

clean:
	rm -rf $(VENV) .pytest_cache
