# The course's commands. Each target sets up .venv/ itself on a fresh machine.
#   make lab       open JupyterLab at notebook 01
#   make test      unit and claim tests, then strict nbval over every notebook
#   make execute   re-run notebooks in place (all, or NB=notebooks/01-....ipynb)
#   make bench     each notebook's nbval time as a ratio to the floor (import torch),
#                  then the zero_grad checker's overhead per training step (make bench-guard)
#   make test-threads  strict nbval with OMP_NUM_THREADS=1, then 2
#   make test-launch   Binder configuration and JupyterLab in Chromium (needs /usr/bin/chromium)
#   make test-gpu      strict nbval with the device forced to CUDA

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LAUNCH_STAMP := $(VENV)/.installed-launch
NBVAL := $(PY) -m pytest -q --nbval --nbval-current-env --nbval-cell-timeout=300
FIRST := notebooks/01-gradients-accumulate.ipynb
NB ?= $(sort $(wildcard notebooks/*.ipynb notebooks/solutions/*.ipynb))
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: setup lab test test-unit test-notebooks test-threads test-launch test-gpu execute bench bench-guard clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# default_url: both the browser it opens and the URL it prints (with the token) land on notebook 01
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 $(ROOT_FLAG) --LabApp.default_url=/lab/tree/$(FIRST)

test: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/launch
	$(NBVAL) notebooks

test-unit: $(STAMP)
	$(PY) -m pytest -q tests --ignore=tests/launch

test-notebooks: $(STAMP)
	$(NBVAL) $(NB)

test-threads: $(STAMP)
	OMP_NUM_THREADS=1 $(NBVAL) notebooks
	OMP_NUM_THREADS=2 $(NBVAL) notebooks

$(LAUNCH_STAMP): $(STAMP) tests/launch/requirements.txt
	$(PY) -m pip install --quiet -r tests/launch/requirements.txt
	touch $(LAUNCH_STAMP)

test-launch: $(LAUNCH_STAMP)
	$(PY) -m pytest -q tests/launch

test-gpu: $(STAMP)
	COURSE_DEVICE=cuda $(NBVAL) notebooks

execute: $(STAMP)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	  --ExecutePreprocessor.kernel_name=python3 \
	  --ExecutePreprocessor.record_timing=False \
	  --ClearMetadataPreprocessor.enabled=True \
	  --ClearMetadataPreprocessor.clear_notebook_metadata=False \
	  --ClearMetadataPreprocessor.preserve_cell_metadata_mask=tags \
	  $(NB)
	$(PY) tests/tidy_tracebacks.py $(NB)

bench: $(STAMP)
	$(PY) tests/benchmark.py $(NB)
	$(PY) tests/bench_guard.py

bench-guard: $(STAMP)
	$(PY) tests/bench_guard.py

clean:
	rm -rf $(VENV) build *.egg-info
