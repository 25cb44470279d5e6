"""Shared fixtures: a tiny synthetic NT set, generated and converted once per session."""
import os

import pytest
import torch

from voting_det.data import register_nt_coco
from voting_det.data.fetus_framework import convert_fetus_framework
from voting_det.data.synthetic import generate_synthetic_nt

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
