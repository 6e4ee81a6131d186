# The two doors: `make demo` and `make test`. Each builds .venv from nothing when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The demo study: paper Table 1's four rows x 5 seeds on the digits set, VGG-small at a quarter of its
# channels (about 3 minutes on 2 cores), then its table from MLflow into reports/ablation.md. Run again,
# every trial is cached (seconds).
demo: venv
	$(PY) -m study.run search_spaces/ablation.yaml --profile demo
	$(PY) -m study.report ablation

test: venv
	$(PY) -m pytest -q
