# Two commands on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CORPUS := saves/tinyshakespeare.txt

RECIPE := saves/shakespeare.recipe.json

.PHONY: train test bench shakespeare install clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "Python 3.10 or newer is needed (found $$($(PYTHON) --version)); set PYTHON=python3.X"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

$(CORPUS): | $(VENV)/.installed
	$(PY) scripts/fetch_data.py

train: $(VENV)/.installed $(CORPUS)
	$(PY) scripts/train_local.py $(ARGS)

# The shipped model from scratch, as the recipe fixes it; resumes where it stopped.
shakespeare: $(VENV)/.installed $(CORPUS)
	$(PY) scripts/train_local.py --recipe $(RECIPE) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed $(CORPUS)
	$(PY) scripts/bench.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
