"""Convert pretrained ResNet-18 weights for voting_det's truncated detectron2 backbones
(the conversion step of :class:`~voting_det.engine.checkpoint.SafeCheckpointer`).

The local and the context branch each own a detectron2 ``ResNet`` built to res4
(docs/method.md sections 2 and 3). :func:`load_pretrained_backbone` fills one of them
from a local file, converting names on the fly, so no converted copy of the
file is ever needed. Accepted files:

- a torchvision ResNet state dict (``.pth``: ``conv1.weight``, ``bn1.*``,
  ``layer1.0.conv1.weight``, ..., ``fc.*``);
- a detectron2 checkpoint (``.pth``: ``{"model": state_dict}`` or a bare state
  dict, detectron2 names such as ``res2.0.conv1.norm.weight``, possibly under
  ``backbone.bottom_up.`` or ``backbone.``);
- a detectron2 / Detectron model-zoo pickle (``.pkl``: ``{"model": {name:
  array}}`` or Detectron's ``{"blobs": ...}``, detectron2 names or Caffe2 names
  such as ``res2_0_branch2a_w``), read only with ``trust_pickle=True`` because
  unpickling a file can run arbitrary code.

``.pth`` files are read with ``torch.load(..., weights_only=True)``, which cannot
run code. Normalisation must match: pretrained BatchNorm statistics load exactly
into ``FrozenBN`` (or ``BN``) layers and are refused for GroupNorm, so set
``MODEL.RESNETS.NORM: FrozenBN`` when loading pretrained weights (GroupNorm is
the from-scratch default).
"""
import logging
import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone import ResNet
from torch import Tensor, nn

from .checkpoint import read_weights

__all__ = ["CHECKPOINT_PREFIXES", "load_pretrained_backbone", "read_weight_file"]

logger = logging.getLogger(__name__)

# Where detectron2 meta-architectures keep their ResNet: FPN models under
# "backbone.bottom_up.", C4 models (and voting_det's local branch) under "backbone.".
CHECKPOINT_PREFIXES = ("backbone.bottom_up.", "backbone.")
# The stem convolution, the one weight whose input channels may be adapted.
STEM_WEIGHT = "stem.conv1.weight"
# Input channels of the files' stems (RGB / BGR) and of a grey stem.
COLOUR_CHANNELS = 3
GREY_CHANNELS = 1
# torchvision's stage "layerN" is detectron2's "res{N+1}".
TORCHVISION_STAGE_OFFSET = 1
# BatchNorm buffer counting training steps; nothing to load, nothing missing.
NUM_BATCHES_TRACKED = "num_batches_tracked"
# torchvision -> detectron2 renaming rules, applied in order.
_TORCHVISION_RULES = (
    (re.compile(r"^conv1\."), "stem.conv1."),
    (re.compile(r"^bn1\."), "stem.conv1.norm."),
    (re.compile(r"^layer(\d+)\."), lambda m: f"res{int(m.group(1)) + TORCHVISION_STAGE_OFFSET}."),
    (re.compile(r"\.bn(\d+)\."), r".conv\1.norm."),
    (re.compile(r"\.downsample\.0\."), ".shortcut."),
    (re.compile(r"\.downsample\.1\."), ".shortcut.norm."),
)
_TORCHVISION_KEY = re.compile(r"^(layer\d+\.|bn1\.)")
# Normalisation layers that hold BatchNorm statistics.
_BATCH_NORMS = (FrozenBatchNorm2d, nn.modules.batchnorm._BatchNorm)
_NORM_HINT = "set MODEL.RESNETS.NORM: FrozenBN (or BN) when loading pretrained weights"


def read_weight_file(path: str, *, trust_pickle: bool = False) -> Tuple[Dict[str, Tensor], List[str]]:
    """Read a weight file into ``(name -> tensor, names of non-array entries)``.

    ``{"model": ...}`` and Detectron's ``{"blobs": ...}`` wrappers are unwrapped;
    numpy arrays become tensors. The file is read by
    :func:`voting_det.engine.checkpoint.read_weights` (pickles only with
    ``trust_pickle``).
    """
    data = read_weights(path, trust_pickle=trust_pickle)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dict of weights")
    for wrapper in ("model", "blobs"):
        if isinstance(data.get(wrapper), Mapping):
            data = data[wrapper]
            break
    weights, skipped = {}, []
    for name, value in data.items():
        if isinstance(value, Tensor):
            weights[name] = value
        elif isinstance(value, np.ndarray):
            weights[name] = torch.from_numpy(np.ascontiguousarray(value))
        else:
            skipped.append(name)
    return weights, skipped


def _torchvision_to_detectron2(name: str) -> str:
    for pattern, replacement in _TORCHVISION_RULES:
        name = pattern.sub(replacement, name)
    return name


def _detect_format(names: List[str]) -> str:
    """``"torchvision"``, ``"caffe2"`` (no dot in any name) or ``"detectron2"``."""
    if any(_TORCHVISION_KEY.match(n) for n in names):
        return "torchvision"
    if names and all("." not in n for n in names):
        return "caffe2"
    return "detectron2"


def _to_detectron2_names(names: List[str], fmt: str) -> List[str]:
    if fmt == "torchvision":
        return [_torchvision_to_detectron2(n) for n in names]
    if fmt == "caffe2":
        return convert_basic_c2_names(names)
    return list(names)


def _choose_prefix(names: List[str], model_keys: List[str]) -> str:
    """The prefix among ``""`` and ``CHECKPOINT_PREFIXES`` under which most model keys appear."""
    present = set(names)
    return max(("",) + CHECKPOINT_PREFIXES, key=lambda p: sum(p + k in present for k in model_keys))


def _check_norms(backbone: nn.Module, names: List[str], fmt: str, path: str) -> None:
    """Refuse BatchNorm statistics for a backbone whose norm layers are not BatchNorm.

    A layer of the file carries BatchNorm statistics when it has ``running_mean``,
    or always in a Caffe2 file (Detectron folds them into the scale and bias).
    """
    suffix = ".norm.weight" if fmt == "caffe2" else ".norm.running_mean"
    for name in sorted(n for n in names if n.endswith(suffix)):
        conv_name = name[: -len(suffix)]
        try:
            conv = backbone.get_submodule(conv_name)
        except AttributeError:
            continue  # not a layer of this backbone: reported as unused
        norm = getattr(conv, "norm", None)
        if not isinstance(norm, _BATCH_NORMS):
            kind = type(norm).__name__ if norm is not None else "no normalisation"
            raise ValueError(
                f"{path}: the file holds BatchNorm statistics for '{conv_name}.norm', but the backbone "
                f"uses {kind} there; they cannot be loaded into it (copying only the affine weights "
                f"would not reproduce the pretrained network): {_NORM_HINT}"
            )


def _folded_norm_stats(backbone: nn.Module, names: List[str], model_keys: List[str]) -> Dict[str, str]:
    """Model keys a Caffe2 file leaves to FrozenBN's defaults, with the reason.

    Detectron's Caffe2 BatchNorms keep only a scale and a bias; FrozenBN's
    default statistics (mean 0, var 1 - eps) make it apply exactly that affine map.
    """
    present = set(names)
    defaults = {}
    for key in model_keys:
        layer, _, buffer = key.rpartition(".")
        if (
            buffer in ("running_mean", "running_var")
            and key not in present
            and layer + ".weight" in present
            and isinstance(backbone.get_submodule(layer), FrozenBatchNorm2d)
        ):
            defaults[key] = "Caffe2 folded BatchNorm: kept FrozenBN's identity statistics"
    return defaults


def _collapse_to_grey(value: Tensor, target: torch.Size) -> Optional[Tensor]:
    """The stem kernel summed over its RGB inputs, if that gives ``target``'s shape.

    A grey image replicated in 3 channels convolved with the RGB kernel equals
    the grey image convolved with the sum of the 3 kernels.
    """
    if (
        value.dim() == 4
        and value.shape[1] == COLOUR_CHANNELS
        and target[1] == GREY_CHANNELS
        and value.shape[:1] + value.shape[2:] == target[:1] + target[2:]
    ):
        return value.sum(dim=1, keepdim=True)
    return None


def load_pretrained_backbone(
    backbone: ResNet,
    path: str,
    *,
    trust_pickle: bool = False,
    allow_missing: bool = False,
    allow_unexpected: bool = False,
    prefix: Optional[str] = None,
) -> Dict[str, object]:
    """Load a pretrained ResNet's weights from ``path`` into a detectron2 ``backbone``.

    Names are converted to detectron2's (torchvision ``layerN.i.bnJ`` ->
    ``res{N+1}.i.convJ.norm``, ``downsample.0/1`` -> ``shortcut(.norm)``,
    ``conv1``/``bn1`` -> ``stem.conv1(.norm)``; Caffe2 names by detectron2's
    ``convert_basic_c2_names``). Entries the backbone has no place for (``fc``,
    stages past the truncation such as res5, ``num_batches_tracked``, other
    modules of a full detector) are skipped and reported as unused. A 1-channel
    stem receives the RGB kernels summed (exact for a grey image replicated in 3
    equally normalised channels).

    Args:
        backbone: a detectron2 ``ResNet`` (possibly truncated, 1 or 3 input channels).
        path: the weight file (see the module docstring for the formats).
        trust_pickle: allow reading pickles (``.pkl``), which can run code.
        allow_missing: keep the initial values of backbone keys the file lacks
            instead of raising.
        allow_unexpected: ignore file entries inside the backbone's stages that the
            backbone lacks (e.g. the extra blocks of a ResNet-34) instead of raising.
        prefix: the name prefix of the backbone in the file; ``None`` picks the one
            of ``""`` and ``CHECKPOINT_PREFIXES`` that matches most keys.

    Returns:
        ``{"format", "prefix", "loaded": number of keys loaded, "unused": file names
        not loaded, "missing": backbone keys left as they were, "adapted": {key: how}}``.

    Raises:
        ValueError: for a refused pickle, BatchNorm statistics into a non-BatchNorm
            backbone, shape mismatches (each key with the file's and the model's
            shape), and unless allowed, missing or unexpected keys.
    """
    weights, unused = read_weight_file(path, trust_pickle=trust_pickle)
    model_state = backbone.state_dict()
    model_keys = list(model_state)
    file_names = list(weights)
    fmt = _detect_format(file_names)
    converted = _to_detectron2_names(file_names, fmt)
    if prefix is None:
        prefix = _choose_prefix(converted, model_keys)
    original = {}  # detectron2 name (prefix stripped) -> name in the file
    for new, old in zip(converted, file_names):
        if new.startswith(prefix):
            original[new[len(prefix):]] = old
        else:
            unused.append(old)
    _check_norms(backbone, list(original), fmt, path)

    built_stages = {"stem", *backbone.stage_names}
    to_load, adapted, mismatches, unexpected = {}, {}, [], []
    for name, old in original.items():
        value = weights[old]
        if name not in model_state:
            unused.append(old)
            if name.split(".", 1)[0] in built_stages and not name.endswith(NUM_BATCHES_TRACKED):
                unexpected.append(name if name == old else f"{name} (file: {old})")
            continue
        target = model_state[name].shape
        if value.shape == target:
            to_load[name] = value
            continue
        grey = _collapse_to_grey(value, target) if name == STEM_WEIGHT else None
        if grey is None:
            mismatches.append(f"{old}: file {tuple(value.shape)}, model {tuple(target)}")
        else:
            to_load[name] = grey
            adapted[name] = f"summed the {COLOUR_CHANNELS} input channels into {GREY_CHANNELS}"
    if mismatches:
        raise ValueError(f"{path}: shapes differ from the backbone's:\n  " + "\n  ".join(mismatches))
    if unexpected and not allow_unexpected:
        raise ValueError(
            f"{path}: entries inside the backbone's stages that the backbone lacks (a deeper ResNet? "
            f"check MODEL.RESNETS.DEPTH; allow_unexpected=True ignores them): {sorted(unexpected)}"
        )
    if fmt == "caffe2":
        adapted.update(_folded_norm_stats(backbone, list(original), model_keys))
    missing = sorted(
        k for k in model_keys if k not in to_load and k not in adapted and not k.endswith(NUM_BATCHES_TRACKED)
    )
    if missing and not allow_missing:
        raise ValueError(
            f"{path}: the file lacks backbone keys (allow_missing=True keeps their initial values): {missing}"
        )
    backbone.load_state_dict({**model_state, **to_load})
    report = {
        "format": fmt,
        "prefix": prefix,
        "loaded": len(to_load),
        "unused": sorted(unused),
        "missing": missing,
        "adapted": adapted,
    }
    logger.info(
        "loaded %d %s weights from %s (prefix '%s'); %d unused, %d missing, adapted: %s",
        len(to_load), fmt, path, prefix, len(unused), len(missing), adapted or "none",
    )
    return report
