# Two commands for a fresh machine (Python 3.11 + pip): `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-all bench device-check notebooks report clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev,notebooks,kaggle,tensorboard]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(PY) -m repro quickstart --out runs/quickstart --results results/quickstart

test: $(STAMP)
	@$(PY) -m pytest -q -m "not slow" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no test" >&2; exit 1; fi; exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# On a GPU, at most 8 minutes: CUDA tests, GPU benchmarks, kill -9 + resume, CUDA graph, 4-core data pipeline.
# Where torch is installed already (a GPU image without internet): python benchmarks/device_check.py
device-check: $(STAMP)
	$(PY) benchmarks/device_check.py $(ARGS)

report: $(STAMP)
	$(PY) -m repro report --runs runs --out results

notebooks: $(STAMP)
	$(PY) -m jupytext --sync notebooks/*.py
	cp notebooks/*.ipynb repro/notebooks/

clean-venv:
	rm -rf $(VENV)
