# The two doors: `make demo` and `make test`. Each builds .venv from nothing when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast docs venv constraints

venv: $(STAMP)

# constraints.txt pins every package to the version the tests passed with; pyproject.toml keeps ranges.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,server,docs]'
	touch $(STAMP)

# After an upgrade in .venv that passed `make test`: its versions become the tested ones.
constraints:
	{ echo '# Every package `make venv` installs, at the version `make test` passed with. Made by `make constraints`'; \
	  echo '# (pip freeze --exclude-editable of .venv): rerun it after an upgrade in .venv that passed `make test`.'; \
	  $(PY) -m pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# The demo study: paper Table 1's four rows x 5 seeds on the digits set, VGG-small at a quarter of its
# channels (about 3 minutes on 2 cores), then its table from MLflow into reports/ablation.md. Run again,
# every trial is cached (seconds).
demo: venv
	$(PY) -m study.run search_spaces/ablation.yaml --profile demo
	$(PY) -m study.report ablation

# Two worker processes, a test file each at a time (a file's module fixtures are made once), then the
# timing-sensitive tests alone (docs/testing.md)
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not serial" --durations=40
	$(PY) -m pytest -q -m serial --durations=10

# Everything but the tests marked slow (real Ray, MLflow, processes, training runs), on two worker processes:
# about a minute (docs/testing.md)
test-fast: venv
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

# docs/ as a site in site/ (mkdocs, material theme); a broken link or a page missing from the nav fails it
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
