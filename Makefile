# Two commands for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint lab table clean-runs clean-notebooks

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m adafilter_lib demo

test: $(STAMP)
	$(PY) -m pytest -q

# Lint (pyflakes, pycodestyle errors, import order; rules in pyproject.toml) and format check. CI runs it before
# the tests; `$(VENV)/bin/ruff format adafilter_lib tests` formats.
lint: $(STAMP)
	$(VENV)/bin/ruff check adafilter_lib tests
	$(VENV)/bin/ruff format --check adafilter_lib tests

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root,)

# One study per runs folder: `make table RUNS=runs/my_study` (runs of different recipes do not average).
RUNS ?= runs/demo
table: $(STAMP)
	$(PY) -m adafilter_lib table --runs $(RUNS) --out results/tables

clean-runs:
	rm -rf runs

# Paper-scale study on your own GPU machine (data prepared with `python -m adafilter_lib prepare NAME`).
# `make reproduce ARGS=--dry-run` prints the plan; `ARGS="--shard 2/4"` runs one shard of four.
PAPER_DATASETS ?= stanford_dogs mit_indoor67 caltech256_30 caltech256_60 fgvc_aircraft ucf101 omniglot_decathlon
PAPER_METHODS ?= finetune linear_probe l2sp adafilter adafilter_random
SEEDS ?= 0 1 2
.PHONY: reproduce
reproduce: $(STAMP)
	$(PY) -m adafilter_lib sweep --datasets $(PAPER_DATASETS) --methods $(PAPER_METHODS) --seeds $(SEEDS) $(ARGS)

# Notebooks are committed without outputs or saved widget state (tests/test_notebooks.py checks it).
clean-notebooks: $(STAMP)
	$(VENV)/bin/jupyter nbconvert --clear-output --inplace --ClearMetadataPreprocessor.enabled=True \
		--ClearMetadataPreprocessor.clear_cell_metadata=False --ClearMetadataPreprocessor.preserve_nb_metadata_mask=kernelspec \
		--ClearMetadataPreprocessor.preserve_nb_metadata_mask=language_info notebooks/*.ipynb
