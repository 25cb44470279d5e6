"""Weights a user can rely on (issue "Trust", items 1 and 2), on every path
that builds a voting_det model and loads weights into it: training
(detectron2's trainer, ``Trainer``), the predictor builder of predict and the
demo, the ``Explainer`` of explain / atlas / faithfulness, and a plain
detectron2 ``DefaultPredictor`` in a user's own script.

- A crafted pickle (``.pkl``) or ``.pth`` whose unpickling creates a folder
  is refused before any byte runs: the folder never appears.
- Wrong weights (a torchvision ResNet-18 state dict, weights of another K)
  are refused naming the tensors, never loaded with a warning.
"""
import os

import pytest
import torch
import torchvision
from detectron2.engine import DefaultPredictor

from voting_det.config import UnsafeWeightsError
from voting_det.engine import Trainer, build_predictor
from voting_det.interpretation import Explainer

from .test_model import small_cfg


class _MakesFolder:
    """Unpickling this creates ``path`` (the stand-in for any code)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def _crafted(tmp_path, suffix):
    marker = str(tmp_path / f"code_ran{suffix.replace('.', '_')}")
    path = str(tmp_path / f"weights{suffix}")
    if suffix == ".pkl":
        import pickle

        with open(path, "wb") as f:
            pickle.dump({"model": {"x": _MakesFolder(marker)}, "__author__": "attacker"}, f)
    else:
        torch.save({"model": {"x": _MakesFolder(marker)}}, path)
    return path, marker


def _cfg(weights, tmp_path, **overrides):
    cfg = small_cfg(**overrides)
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    return cfg


def _train_load(cfg):
    # what tools/train_net.py and tools/train_voting.py do before training
    # (the loader is not needed to refuse the weights: build the model, then load)
    from voting_det.engine.checkpoint import SafeCheckpointer
    from detectron2.modeling import build_model

    model = build_model(cfg)
    SafeCheckpointer.from_config(cfg, model, cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)


ENTRY_POINTS = {
    "train (Trainer's checkpointer)": _train_load,
    "predict / demo (build_predictor)": build_predictor,
    "explain / atlas / faithfulness (Explainer)": Explainer,
    "a user's DefaultPredictor script": DefaultPredictor,
}


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_crafted_weights_file_never_runs_code(tmp_path, entry, suffix):
    path, marker = _crafted(tmp_path, suffix)
    with pytest.raises(Exception) as e:
        ENTRY_POINTS[entry](_cfg(path, tmp_path))
    assert not os.path.exists(marker), f"{entry} ran code from {path}"
    if suffix == ".pkl":  # refused by name before reading, with the key that would allow it
        assert isinstance(e.value, UnsafeWeightsError) and "MODEL.CHECKPOINT.TRUST_PICKLE" in str(e.value)
    else:  # torch.load(weights_only=True) refuses the object
        assert "weights_only" in str(e.value) or "Unsupported" in str(e.value) or "WeightsUnpickler" in str(e.value)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_torchvision_state_dict_is_refused_naming_the_tensors(tmp_path, entry):
    path = str(tmp_path / "resnet18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit this model.*backbone\.stem\.conv1\.weight"):
        ENTRY_POINTS[entry](_cfg(path, tmp_path))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_weights_of_another_k_are_refused_everywhere(tmp_path, entry):
    """The demo's K = 64 weights under a K = 128 config (the user's case), here
    K = 8 weights under K = 4: refused, the template tensors named."""
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    path = str(tmp_path / "k8.pth")
    torch.save({"model": build_model(small_cfg()).state_dict()}, path)
    with pytest.raises(ValueError, match=r"semantic_templates"):
        ENTRY_POINTS[entry](_cfg(path, tmp_path, **{"MODEL.VOTING.NUM_PRIMITIVES": 4}))


def test_the_same_weights_load_on_every_path(tmp_path):
    """The refusals above are not refusing everything: a whole model of the
    config loads on each path and predicts the same boxes."""
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    cfg = _cfg("", tmp_path)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    good = _cfg(path, tmp_path)
    image = (torch.rand(128, 192, 3) * 255).to(torch.uint8).numpy()
    boxes = [build_predictor(good)(image)["instances"].pred_boxes.tensor,
             DefaultPredictor(good)(image)["instances"].pred_boxes.tensor]
    _train_load(good)
    Explainer(good)
    assert torch.equal(boxes[0], boxes[1])


def test_training_keeps_refusing_until_the_trainer_is_built(tmp_path):
    """detectron2's DefaultTrainer builds the model from the config: a pickle
    MODEL.WEIGHTS stops it there, before the data loader or any file is read."""
    path, marker = _crafted(tmp_path, ".pkl")
    with pytest.raises(UnsafeWeightsError):
        Trainer(_cfg(path, tmp_path))
    assert not os.path.exists(marker)
