# The course's commands. Each target sets up .venv/ itself on a fresh machine.
#   make lab       make your copies of the lessons (make workbooks), open JupyterLab at 01's copy
#   make workbooks copy every lesson, outputs cleared, into workbooks/ (git-ignored); a copy
#                  you worked in is never overwritten
#   make workbook NB=03   start lesson 03 afresh (your old copy moves to workbooks/previous/)
#   make handout   build/zero-grad-course-handout.zip for a class: copies, no solutions
#   make test      unit and claim tests, then strict nbval over every notebook
#   make execute   re-run notebooks in place (all, or NB=notebooks/01-....ipynb)
#   make bench     each notebook's nbval time as a ratio to the floor (import torch),
#                  then the zero_grad checker's overhead per training step (make bench-guard)
#   make test-threads  strict nbval with OMP_NUM_THREADS=1, then 2
#   make test-launch   Binder configuration; the learner copies of every lesson run in JupyterLab
#                      in Chromium (needs /usr/bin/chromium), screenshots in build/screenshots/
#   make test-gpu      strict nbval with the device forced to CUDA

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LAUNCH_STAMP := $(VENV)/.installed-launch
NBVAL := $(PY) -m pytest -q --nbval --nbval-current-env --nbval-cell-timeout=300
NB ?= $(sort $(wildcard notebooks/*.ipynb notebooks/solutions/*.ipynb))
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
# Copies and the hand-out need only the standard library: the venv's Python if there is one.
WB_PY = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
# matplotlib 3.11 and scikit-learn 1.9, pinned in requirements.txt, need Python 3.11.
NEEDS = The course needs Python 3.11 or newer, and $(PYTHON) is $$($(PYTHON) --version 2>&1): \
        name another, e.g. make lab PYTHON=python3.12

.PHONY: setup lab workbooks workbook handout test test-unit test-notebooks test-threads test-launch test-gpu \
        execute bench bench-guard clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(NEEDS)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# JupyterLab over the repository, opened (browser and printed URL) at workbooks/01-...ipynb,
# with the course's settings for this venv only (no "Jupyter news?" pop-up): utils/workbooks.py
lab: $(STAMP) workbooks
	$(PY) -m utils.workbooks lab $(ROOT_FLAG)

workbooks:
	$(WB_PY) -m utils.workbooks make

workbook:
	@[ "$(origin NB)" != file ] || { echo "usage: make workbook NB=03 (the lesson's number)" >&2; exit 2; }
	$(WB_PY) -m utils.workbooks refresh $(NB)

handout:
	$(WB_PY) -m utils.handout

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
