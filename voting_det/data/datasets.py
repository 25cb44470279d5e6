"""Registration of the NT data sets in detectron2's catalogs.

The converter (``tools/convert_fetus_framework.py``) writes one folder of COCO
JSON files per data set::

    <coco_dir>/all.json
    <coco_dir>/fold{k}_train.json, fold{k}_val.json, fold{k}_test.json

Each JSON names its image folder in ``info["image_root"]`` (relative to the JSON
file, or absolute). :func:`register_nt_coco` registers the files of one such
folder under ``<prefix>_all`` and ``<prefix>_fold{k}_{train,val,test}``.
Registration is lazy: nothing is read until a data set is used.

Importing :mod:`voting_det` registers the built-in sets below their
``$DETECTRON2_DATASETS`` root (default ``./datasets``):

====================  ==============================  =============================
names                 folder                          made by
====================  ==============================  =============================
``nt_*``              ``$DETECTRON2_DATASETS/nt``       ``make demo`` (synthetic NT)
``nt_real_*``         ``$DETECTRON2_DATASETS/nt_real``  converting the public set
====================  ==============================  =============================
"""
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "BUILTIN_NT_SETS",
    "NT_EVALUATOR_TYPE",
    "NT_SPLITS",
    "load_nt_coco_json",
    "nt_split_files",
    "register_all_nt",
    "register_converted_folder",
    "register_nt_coco",
]

logger = logging.getLogger(__name__)

# evaluator_type of every set registered here; the trainer maps it to its evaluators.
NT_EVALUATOR_TYPE = "nt"
# Number of cross-validation folds the built-in sets are registered with.
DEFAULT_NUM_FOLDS = 3
# name prefix -> folder below $DETECTRON2_DATASETS
BUILTIN_NT_SETS = {"nt": "nt", "nt_real": "nt_real"}
NT_SPLITS = ("train", "val", "test")
# Classes of the built-in sets (converted with the default --structures NT).
BUILTIN_NT_CLASSES = ("NT",)


def _datasets_root() -> str:
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def nt_split_files(num_folds: int = DEFAULT_NUM_FOLDS) -> Dict[str, str]:
    """Registered-name suffix -> JSON file name, e.g. ``"fold0_train" -> "fold0_train.json"``."""
    files = {"all": "all.json"}
    for k in range(num_folds):
        for split in NT_SPLITS:
            files[f"fold{k}_{split}"] = f"fold{k}_{split}.json"
    return files


def _image_root_of(json_file: str, info: dict) -> str:
    """The image folder of a converted file: ``info["image_root_relative"]`` (seen
    from the JSON's folder, so a data set root can be moved as a whole), else
    ``info["image_root"]`` (absolute, or relative to the JSON's folder)."""
    here = os.path.dirname(os.path.abspath(json_file))
    candidates = [info[k] for k in ("image_root_relative", "image_root") if info.get(k) is not None]
    if not candidates:
        raise ValueError(
            f"{json_file}: its 'info' has no 'image_root'; convert the data set with "
            "tools/convert_fetus_framework.py, or register it with detectron2's "
            "register_coco_instances and an explicit image folder"
        )
    roots = [os.path.normpath(os.path.join(here, c)) for c in candidates]
    for root in roots:
        if os.path.isdir(root):
            return root
    raise FileNotFoundError(
        f"{json_file}: none of its image folders {roots} exists; the images were moved "
        "after conversion: convert the data set again from their new place"
    )


def load_nt_coco_json(json_file: str, dataset_name: Optional[str] = None) -> List[dict]:
    """Load a converted NT COCO file into detectron2's dataset dicts.

    The image folder is read from the file's ``info["image_root"]``; detectron2's
    :func:`load_coco_json` does the rest (and sets ``thing_classes``). Negative
    images (no annotation) are kept with an empty ``annotations`` list.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"{json_file}: not found; create it with tools/convert_fetus_framework.py "
            f"(or `make demo` for the synthetic set); DETECTRON2_DATASETS={_datasets_root()!r}"
        )
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not valid JSON ({e}); convert the data set again") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(
            f"{json_file}: not a COCO detection file (it needs the lists 'images', 'annotations' and "
            "'categories'); convert the data set again with tools/convert_fetus_framework.py"
        )
    image_root = _image_root_of(json_file, data.get("info") or {})
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name)
    except (KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"{json_file}: malformed COCO content ({type(e).__name__}: {e}); convert the data set again") from e
    check_boxes(dicts, json_file)
    return dicts


# a box may overhang the image by this many pixels (rounding of annotation tools)
BOX_TOLERANCE_PX = 1.0


def check_boxes(dicts: List[dict], source: str) -> None:
    """Refuse degenerate, negative-size and out-of-image boxes, naming the file,
    image and annotation (a model would otherwise train on them silently)."""
    problems = []
    for d in dicts:
        w, h = d.get("width"), d.get("height")
        for i, a in enumerate(d.get("annotations", [])):
            where = f"image {d.get('image_id')!r} ({os.path.basename(d['file_name'])}), annotation {i}, bbox {a.get('bbox')}"
            try:
                x0, y0, bw, bh = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{where}: needs a bbox of 4 numbers")
                continue
            if not (np.isfinite([x0, y0, bw, bh]).all()):
                problems.append(f"{where}: not a number")
            elif bw <= 0 or bh <= 0:
                problems.append(f"{where}: width and height must be > 0")
            elif w and h and (x0 < -BOX_TOLERANCE_PX or y0 < -BOX_TOLERANCE_PX
                              or x0 + bw > w + BOX_TOLERANCE_PX or y0 + bh > h + BOX_TOLERANCE_PX):
                problems.append(f"{where}: outside the {w}x{h} image")
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ValueError(f"{source}: {len(problems)} bad box(es) (COCO bbox is [x, y, width, height] in pixels):\n  {shown}")


def register_nt_coco(
    prefix: str, coco_dir: str, num_folds: int = DEFAULT_NUM_FOLDS, thing_classes: Optional[List[str]] = None
) -> List[str]:
    """Register the converted files of ``coco_dir`` as ``<prefix>_all``,
    ``<prefix>_fold{k}_{train,val,test}``; returns the registered names.

    Works for any set converted by ``tools/convert_fetus_framework.py``: a user's
    own data are registered with one call, e.g.
    ``register_nt_coco("my_nt", "/data/my_nt_coco")``. ``thing_classes``, when
    known, is set at once (tools need it before the files are read); it must be
    the converted structures in order, else loading the set fails.
    """
    names = []
    for suffix, file_name in nt_split_files(num_folds).items():
        name = f"{prefix}_{suffix}"
        json_file = os.path.join(coco_dir, file_name)
        DatasetCatalog.register(name, lambda j=json_file, n=name: load_nt_coco_json(j, n))
        MetadataCatalog.get(name).set(json_file=json_file, evaluator_type=NT_EVALUATOR_TYPE)
        if thing_classes is not None:
            MetadataCatalog.get(name).set(thing_classes=list(thing_classes))
        names.append(name)
    return names


def register_converted_folder(name: str, coco_dir: str) -> List[str]:
    """Register a folder written by ``tools/convert_fetus_framework.py`` (or by
    the synthetic generator) under ``name``: ``<name>_all`` and, for each fold
    k whose ``fold{k}_train.json`` exists, ``<name>_fold{k}_{train,val,test}``.
    The class names come from ``all.json``'s categories. Registering the same
    folder under the same name again does nothing; a name already taken by
    another folder (or a built-in set) is refused. Returns the names."""
    coco_dir = os.path.abspath(os.path.expanduser(coco_dir))
    all_json = os.path.join(coco_dir, "all.json")
    taken = f"{name}_all" in DatasetCatalog.list()
    if taken:
        other = MetadataCatalog.get(f"{name}_all").get("json_file", None)
        if other is not None and os.path.abspath(other) == all_json:
            return [n for n in DatasetCatalog.list() if n == f"{name}_all" or n.startswith(f"{name}_fold")]
        raise ValueError(f"data set name {name!r} is taken (by {other or 'another registration'}); choose another "
                         f"name for {coco_dir}")
    if not os.path.isfile(all_json):
        raise FileNotFoundError(f"{coco_dir}: no all.json in it; convert the folder of images and annotations with "
                                "tools/convert_fetus_framework.py --output <this folder> first")
    with open(all_json) as f:
        try:
            categories = json.load(f).get("categories")
        except (json.JSONDecodeError, AttributeError) as e:
            raise ValueError(f"{all_json}: not a COCO detection file ({e}); convert the folder again") from None
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "name" in c for c in categories):
        raise ValueError(f"{all_json}: its 'categories' list is missing or malformed; convert the folder again")
    classes = [c["name"] for c in sorted(categories, key=lambda c: c.get("id", 0))]
    num_folds = 0
    while os.path.isfile(os.path.join(coco_dir, f"fold{num_folds}_train.json")):
        num_folds += 1
    return register_nt_coco(name, coco_dir, num_folds, thing_classes=classes)


def register_all_nt(root: Optional[str] = None) -> None:
    """Register the built-in NT sets below ``root`` (default ``$DETECTRON2_DATASETS``)."""
    root = _datasets_root() if root is None else root
    for prefix, folder in BUILTIN_NT_SETS.items():
        if f"{prefix}_all" not in DatasetCatalog.list():
            register_nt_coco(prefix, os.path.join(root, folder), thing_classes=list(BUILTIN_NT_CLASSES))
