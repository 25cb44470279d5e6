"""Registration of converted sets and the ultrasound mapper, on hand-made files."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from voting_det import add_voting_config
from voting_det.data import build_ultrasound_mapper, load_nt_coco_json, register_nt_coco


def _write_set(tmp_path, image_root_in_json):
    images = tmp_path / "src" / "Train & Val"
    images.mkdir(parents=True)
    grey = np.full((40, 60), 90, np.uint8)
    grey[20:24, 5:35] = 10  # an off-centre dark band
    cv2.imwrite(str(images / "0.png"), grey)  # a 1-channel PNG
    cv2.imwrite(str(images / "1.png"), np.dstack([grey] * 3))
    coco = {
        "info": {"image_root": image_root_in_json},
        "images": [
            {"id": 1, "file_name": "Train & Val/0.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "Train & Val/1.png", "height": 40, "width": 60},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5.0, 19.0, 30.0, 6.0], "area": 180.0, "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "NT"}],
    }
    out = tmp_path / "coco"
    out.mkdir()
    for name in ["all"] + [f"fold{k}_{s}" for k in range(3) for s in ("train", "val", "test")]:
        (out / f"{name}.json").write_text(json.dumps(coco))
    return out


@pytest.mark.parametrize("relative", [True, False])
def test_register_and_load(tmp_path, relative):
    src = str(tmp_path / "src")
    coco_dir = _write_set(tmp_path, "../src" if relative else src)
    prefix = f"unit_nt_{int(relative)}"
    names = register_nt_coco(prefix, str(coco_dir))
    assert f"{prefix}_fold2_val" in names and f"{prefix}_all" in names
    dicts = DatasetCatalog.get(f"{prefix}_fold0_train")
    assert [os.path.normpath(d["file_name"]) for d in dicts] == [
        os.path.join(src, "Train & Val", f"{i}.png") for i in (0, 1)
    ]
    (ann,) = dicts[0]["annotations"]
    assert ann["bbox"] == [5.0, 19.0, 30.0, 6.0] and ann["category_id"] == 0
    assert dicts[1]["annotations"] == []  # a negative image is kept
    meta = MetadataCatalog.get(f"{prefix}_fold0_train")
    assert meta.thing_classes == ["NT"] and meta.evaluator_type == "nt"


def test_missing_json_and_moved_images_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_fetus_framework"):
        load_nt_coco_json(str(tmp_path / "none.json"))
    coco_dir = _write_set(tmp_path, "../moved_away")
    with pytest.raises(FileNotFoundError, match="moved"):
        load_nt_coco_json(str(coco_dir / "all.json"))


def test_mapper_gives_bgr_three_channels_and_flips_boxes(tmp_path):
    coco_dir = _write_set(tmp_path, "../src")
    dicts = load_nt_coco_json(str(coco_dir / "all.json"))
    cfg = get_cfg()
    add_voting_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.ULTRASOUND.HFLIP_PROB = 1.0
    cfg.INPUT.ULTRASOUND.BRIGHTNESS = (1.0, 1.0)
    cfg.INPUT.ULTRASOUND.CONTRAST = (1.0, 1.0)
    out = build_ultrasound_mapper(cfg, is_train=True)(dicts[0])
    image = out["image"]
    assert image.shape == (3, 40, 60) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey replicated
    # the dark band at columns 5..34 moves to 25..54 after the flip, and so does its box
    assert image[0, 21, 25:55].float().mean() < 20 and image[0, 21, 10].item() == 90
    box = out["instances"].gt_boxes.tensor[0].tolist()
    assert box == pytest.approx([25.0, 19.0, 55.0, 25.0])
    test_out = build_ultrasound_mapper(cfg, is_train=False)(dicts[1])
    assert "instances" not in test_out and test_out["image"].shape[0] == 3
