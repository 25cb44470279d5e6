# voting_det: the two commands a new user types are `make demo` and `make test`.
# Both set everything up first (tools/install.sh: .venv, torch, detectron2, this
# package), idempotently: a second run skips the install in well under a second.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
export DETECTRON2_DATASETS ?= $(CURDIR)/datasets

.PHONY: help setup demo test test-fast synthetic convert-real clean-demo

help:
	@echo "make demo          set up, then generate synthetic NT data, train LCF then Proposed, evaluate, draw predictions"
	@echo "make test          set up, then run the whole test suite"
	@echo "make setup         only create/update $(VENV)"
	@echo "make synthetic     (re)measure the synthetic set against the real one (needs ../shared/data)"
	@echo "make convert-real  convert the real development data (../shared/data/fetus_framework_nt) to datasets/nt_real"

setup:
	@VENV=$(VENV) PYTHON=$(PYTHON) bash tools/install.sh

demo: setup
	$(PY) tools/demo.py --datasets $(DETECTRON2_DATASETS) --output-dir output/demo

test: setup
	$(PY) -m pytest -q tests

REAL_NT ?= ../shared/data/fetus_framework_nt

convert-real: setup
	$(PY) tools/convert_fetus_framework.py --root "$(REAL_NT)" --out $(DETECTRON2_DATASETS)/nt_real --skip-invalid

synthetic: setup
	test -f $(DETECTRON2_DATASETS)/nt_synthetic_300/ObjectDetection.xlsx || \
	  $(PY) tools/make_synthetic_nt.py --out $(DETECTRON2_DATASETS)/nt_synthetic_300 --num 300 --seed 0 --workers 2
	$(PY) tools/measure_synthetic.py --synthetic $(DETECTRON2_DATASETS)/nt_synthetic_300 --real "$(REAL_NT)" --out benchmarks/results
