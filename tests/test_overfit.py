"""A real learning check: the full model (LCF + context + fusion) overfits 5
small synthetic images: its loss falls to at most 0.3 of the initial value and
its top-1 box matches the NT (IoU > 0.5) on at least 4 of the 5 images."""
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from voting_det import add_voting_config
from voting_det.config import merge_config_file
from voting_det.data.synthetic import render_synthetic_nt
from voting_det.engine import Trainer

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "nt_voting.yaml")
SIZE = (144, 192)
NUM_IMAGES = 5
ITERATIONS = 80


def _positive_images(seed=7):
    data, index = [], 0
    while len(data) < NUM_IMAGES:
        image, ann = render_synthetic_nt(seed, index, SIZE)
        index += 1
        nt = [box[1:] for box in ann["boxes"] if box[0] == "NT"]
        if not nt:
            continue
        target = Instances(SIZE)
        target.gt_boxes = Boxes(torch.tensor(nt, dtype=torch.float32))
        target.gt_classes = torch.zeros(len(nt), dtype=torch.int64)
        data.append({"image": torch.from_numpy(np.repeat(image[None], 3, axis=0)), "instances": target})
    return data


@pytest.mark.slow
def test_full_model_overfits_five_images():
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, CONFIG)
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.VOTING.NUM_PRIMITIVES", 16,
            "MODEL.VOTING.FC_DIMS", [64],
            "MODEL.CONTEXT.FC_G1_DIMS", [32],
            "MODEL.CONTEXT.FC_G2_DIMS", [64],
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", 32,
            "MODEL.RPN.POST_NMS_TOPK_TEST", 20,
            # 8 sampled proposals per image: the same check at about 3/4 of 16's time (ROIAlign's backward
            # on the CPU costs per proposal); its boxes fit slightly worse, still well above 0.5 (IoU 0.66-0.79 against 0.73-0.87)
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 8,
            "SOLVER.BASE_LR", 1e-3,
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    data = _positive_images()
    model.train()
    with EventStorage() as storage:
        for iteration in range(ITERATIONS):
            storage.iter = iteration
            loss = sum(model(data).values())
            if iteration == 0:
                initial = loss.item()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert loss.item() <= 0.3 * initial, (loss.item(), initial)
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": d["image"]} for d in data])
    ious = [
        pairwise_iou(out["instances"].pred_boxes[:1], d["instances"].gt_boxes).max().item() if len(out["instances"]) else 0.0
        for out, d in zip(outputs, data)
    ]
    assert sum(iou > 0.5 for iou in ious) >= 4, ious
