# voting_det: the two commands a new user types are `make demo` and `make test`.
# Both set everything up first (tools/install.sh: .venv, torch, detectron2, this
# package), idempotently: a second run skips the install in well under a second.

VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
export DETECTRON2_DATASETS ?= $(CURDIR)/datasets

.PHONY: help setup demo test test-fast need-real-nt synthetic convert-real clean-demo benchmark benchmark-synthetic ablations tables synthetic-data benchmark-speed thickness caliper-reference viewer-screenshot

help:
	@echo "make demo          set up, then generate synthetic NT data, train LCF then Proposed, evaluate, draw predictions"
	@echo "make test          set up, then run the whole test suite"
	@echo "make test-fast     the suite without the slow tests (training, several processes), for everyday work"
	@echo "make setup         only create/update $(VENV)"
	@echo "make synthetic     (re)measure the synthetic set against the real one (needs REAL_NT=/path/to/fetus_framework_nt)"
	@echo "make convert-real  convert the public NT set (REAL_NT=/path/to/fetus_framework_nt) to datasets/nt_real"
	@echo "make benchmark     Table 1 on the real data, cpu profile, 3 folds (hours; resumable: rerun to continue)"
	@echo "make ablations     Tables 2 and 3 (K, O) on the real data, cpu profile, fold 0"
	@echo "make benchmark-synthetic  Table 1 on the built-in synthetic set (make demo's: 240 images, seed 0)"
	@echo "make tables        rewrite the committed tables from the committed run records in benchmarks/results/runs (no training)"
	@echo "make benchmark-speed  time every Table 1 model side by side (CPU, ~12 min; SPEED_DEVICE=cuda on a GPU)"
	@echo "make caliper-reference  the sonographers' calipers and pixel spacing of the real images (REAL_NT converted; OCR needs tesseract-ocr)"
	@echo "make thickness     NT thickness of the test folds' top-1 boxes against the sonographers' calipers and the synthetic truth"
	@echo "make viewer-screenshot  docs/images/viewer.png, taken by the viewer's browser test with the demo model (runs make demo first if needed)"

setup:
	@VENV=$(VENV) PYTHON=$(PYTHON) bash tools/install.sh

demo: setup
	$(PY) tools/demo.py --datasets $(DETECTRON2_DATASETS) --output-dir output/demo

# two workers (pytest-xdist); worksteal: a worker that runs out takes tests from the other (with the
# default load scheduling the last ~10% of the suite ran on one worker while the other sat idle)
test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=25 tests

# everyday subset (about 3 minutes): everything but the tests marked slow
# (training, several processes, kill-and-resume)
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow" tests

# where the public NT set (Cui and Dong 2022, CC-BY-4.0; docs/data.md) was unpacked: give it,
# e.g. make convert-real REAL_NT=/path/to/fetus_framework_nt
REAL_NT ?=
need-real-nt:
	@test -n "$(REAL_NT)" || { echo "error: REAL_NT: not set; give the folder of the public NT set, e.g. make convert-real REAL_NT=/path/to/fetus_framework_nt (docs/data.md)" >&2; exit 2; }

convert-real: setup need-real-nt
	$(PY) tools/convert_fetus_framework.py --root "$(REAL_NT)" --out $(DETECTRON2_DATASETS)/nt_real --skip-invalid

synthetic: setup need-real-nt
	test -f $(DETECTRON2_DATASETS)/nt_synthetic_300/ObjectDetection.xlsx || \
	  $(PY) tools/make_synthetic_nt.py --out $(DETECTRON2_DATASETS)/nt_synthetic_300 --num 300 --seed 0 --workers 2
	$(PY) tools/measure_synthetic.py --synthetic $(DETECTRON2_DATASETS)/nt_synthetic_300 --real "$(REAL_NT)" --out benchmarks/results

# ---- Long runs (never part of the tests). Resumable: rerun the same target to continue.
BENCH_FOLDS   ?= 0 1 2
BENCH_METHODS ?= table1
BENCH_ROOT    ?= output/benchmark
RESULTS       := benchmarks/results
# every finished run's small files (metrics, detections, config, times; no weights), committed:
# `make tables` rebuilds the tables from here alone
ARCHIVE       := $(RESULTS)/runs

$(DETECTRON2_DATASETS)/nt_real/all.json:
	$(MAKE) convert-real

# make demo's synthetic set: 240 images, seed 0, 576x768, 3 folds
synthetic-data: setup
	test -f $(DETECTRON2_DATASETS)/nt/all.json || { \
	  $(PY) tools/make_synthetic_nt.py --out $(DETECTRON2_DATASETS)/nt_synthetic --num 240 --seed 0 --workers 2 && \
	  $(PY) tools/convert_fetus_framework.py --root $(DETECTRON2_DATASETS)/nt_synthetic --out $(DETECTRON2_DATASETS)/nt; }

benchmark: setup $(DETECTRON2_DATASETS)/nt_real/all.json
	$(PY) tools/benchmark.py --profile cpu --folds $(BENCH_FOLDS) --methods $(BENCH_METHODS) --root $(BENCH_ROOT) --archive $(ARCHIVE) --out $(RESULTS)/table1_cpu_real

ablations: setup $(DETECTRON2_DATASETS)/nt_real/all.json
	$(PY) tools/benchmark.py --profile cpu --folds 0 --methods ablations --root $(BENCH_ROOT) --archive $(ARCHIVE) --out $(RESULTS)/ablations_cpu_real_fold0

benchmark-synthetic: synthetic-data
	$(PY) tools/benchmark.py --profile cpu-synthetic --folds $(BENCH_FOLDS) --methods $(BENCH_METHODS) --root $(BENCH_ROOT) --archive $(ARCHIVE) --out $(RESULTS)/table1_cpu_synthetic

tables: setup
	$(PY) tools/benchmark.py --profile cpu --folds $(BENCH_FOLDS) --methods table1 --root $(ARCHIVE) --tabulate-only --out $(RESULTS)/table1_cpu_real
	$(PY) tools/benchmark.py --profile cpu --folds 0 --methods ablations --root $(ARCHIVE) --tabulate-only --out $(RESULTS)/ablations_cpu_real_fold0
	$(PY) tools/benchmark.py --profile cpu-synthetic --folds $(BENCH_FOLDS) --methods table1 --root $(ARCHIVE) --tabulate-only --out $(RESULTS)/table1_cpu_synthetic

# Speed, memory, FLOPs of every Table 1 model, interleaved in one process (issue 6)
SPEED_DEVICE ?= cpu
SPEED_OUT    ?= $(RESULTS)/speed_$(SPEED_DEVICE)
benchmark-speed: setup
	$(PY) tools/benchmark_speed.py --device $(SPEED_DEVICE) --profile --out $(SPEED_OUT)

# NT thickness (issue 22): each test image's top-1 box (committed run records) measured and compared
# with the sonographers' calipers (benchmarks/results/thickness/caliper_reference.csv) and with the
# synthetic set's truth; give REAL_NT where the real images are not at the paths the runs recorded
caliper-reference: setup $(DETECTRON2_DATASETS)/nt_real/all.json
	$(PY) tools/extract_caliper_reference.py --out $(RESULTS)/thickness/caliper_reference.csv \
	  --eye-check $(RESULTS)/thickness/caliper_eye_check.csv --controls $(RESULTS)/caliper_labels.csv --sheets output/caliper_check

thickness: setup synthetic-data
	$(PY) tools/evaluate_thickness.py $(if $(REAL_NT),--images "$(REAL_NT)/Train & Val") \
	  --synthetic-runs $(ARCHIVE)/cpu-synthetic/nt --synthetic-metadata $(DETECTRON2_DATASETS)/nt_synthetic/metadata.csv \
	  --out $(RESULTS)/thickness

# docs/images/viewer.png: tests/test_viewer.py's browser test, run with the demo model (docs/viewer.md)
VIEWER_MODEL ?= output/demo/stage2_voting
VIEWER_IMAGE ?= $(DETECTRON2_DATASETS)/nt_synthetic/Train & Val/1.png
viewer-screenshot: setup
	test -f $(VIEWER_MODEL)/model_final.pth || $(MAKE) demo
	VOTING_DET_VIEWER_CONFIG=$(VIEWER_MODEL)/config.yaml VOTING_DET_VIEWER_WEIGHTS=$(VIEWER_MODEL)/model_final.pth \
	VOTING_DET_VIEWER_IMAGE="$(VIEWER_IMAGE)" \
	VOTING_DET_VIEWER_SPACING=$$(awk -F, '$$1=="1.png"{print $$2}' $(DETECTRON2_DATASETS)/nt_synthetic/metadata.csv) \
	VOTING_DET_VIEWER_SCREENSHOT=docs/images/viewer.png \
	  $(PY) -m pytest -q -p no:cacheprovider tests/test_viewer.py -k browser
