"""Shared fixtures: a tiny synthetic NT set, generated and converted once per
session; the numeric code paths every test runs on."""
import os
import sys
import warnings

# The golden tests (test_golden, test_synthetic_golden) and the learning checks
# were recorded on CPUs with AVX2. On an AVX-512 CPU numpy's vectorised math
# (exp, log, sin: the synthetic generator's speckle and shading), torch's own
# kernels and oneDNN's convolutions take AVX-512 paths that round differently:
# on such a machine (AMD EPYC, 2026-12-08) the generator's images differed in
# their bytes, the model's boxes by up to 0.008 px, and the overfit test's loss
# ended at 0.31 instead of under 0.3 of its start. Every test therefore runs
# on the AVX2 paths, which any x86-64 CPU with AVX2 has; the variables must be
# set before numpy and torch are imported, and a caller's own values are kept.
# (On other architectures they do nothing.)
CPU_PATHS = {
    "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_KNL AVX512_KNM AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
for _name, _value in CPU_PATHS.items():
    os.environ.setdefault(_name, _value)
if "numpy" in sys.modules or "torch" in sys.modules:
    warnings.warn("numpy or torch was imported before tests/conftest.py: its AVX2 code paths (CPU_PATHS) may not apply, "
                  "and the golden tests may fail on an AVX-512 CPU; set the variables in the environment instead")

import pytest  # noqa: E402
import torch  # noqa: E402

from voting_det.data import register_nt_coco  # noqa: E402
from voting_det.data.fetus_framework import convert_fetus_framework  # noqa: E402
from voting_det.data.synthetic import generate_synthetic_nt  # noqa: E402

# Under pytest-xdist (make test: two workers on two cores) each worker and every
# process it starts computes on one thread unless the caller chose otherwise:
# two workers with torch's default of one thread per core ran the overfit test's
# iterations 2.7x slower than two one-thread workers (6.5 against 2.4 s, timed
# side by side). Tests that need another count set it themselves (test_golden).
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    torch.set_num_threads(1)

# Small enough to generate, convert and train on in seconds, large enough for 3 folds.
TINY_NUM_IMAGES = 18
TINY_SIZE = (144, 192)


@pytest.fixture(scope="session")
def tiny_nt_set(tmp_path_factory):
    """A registered 18-image synthetic set at 144x192: ``(prefix, source_dir, coco_dir)``."""
    root = tmp_path_factory.mktemp("tiny_nt")
    source, coco = root / "source", root / "coco"
    generate_synthetic_nt(str(source), TINY_NUM_IMAGES, seed=3, size=TINY_SIZE, workers=1, progress=False)
    convert_fetus_framework(str(source), str(coco), structures=("NT",), folds=3, seed=0, progress=False)
    prefix = "tiny_nt"
    register_nt_coco(prefix, str(coco))
    return prefix, source, coco


@pytest.fixture(scope="session")
def tiny_datasets_root(tmp_path_factory):
    """A ``$DETECTRON2_DATASETS`` folder whose built-in ``nt`` set is a tiny
    synthetic one, for tests that start ``tools/*.py`` in subprocesses (they
    register the built-in sets from there)."""
    root = tmp_path_factory.mktemp("tiny_datasets")
    generate_synthetic_nt(str(root / "source"), TINY_NUM_IMAGES, seed=5, size=TINY_SIZE, workers=1, progress=False)
    convert_fetus_framework(str(root / "source"), str(root / "nt"), structures=("NT",), folds=3, seed=0, progress=False)
    return root


def pytest_collection_modifyitems(items):
    """Slow tests first, so that with two workers (make test) the longest ones
    do not start last; the order is otherwise unchanged."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
