"""Golden outputs of LS, LCF and Proposed, recorded before the heads were
restructured (the ROI head now owns the prediction): training losses,
inference detections and the full trace of one detection, from fixed weights
on fixed drawn images. A refactor that changes any of them by more than 1e-6
fails here.

The weights are a deterministic function of each tensor's name and shape
(:func:`fill_weights`), so they do not depend on the order in which modules
are built. Names are given in the layout the golden file was recorded with:
:func:`recorded_name` maps today's parameter names to it.

Re-record (only after a change that is meant to change results, and say so in
the commit): ``python tests/test_golden.py --record``.
"""
import os
import re
import sys
import zlib

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from voting_det.config import setup_cfg

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "heads_golden.pt")


@pytest.fixture(autouse=True)
def recorded_thread_count():
    """torch on the thread count the golden file was recorded with, then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(RECORDED_THREADS)
    yield
    torch.set_num_threads(before)
CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = {"ls": "nt_ls.yaml", "lcf": "nt_lcf.yaml", "proposed": "nt_voting.yaml"}
H, W = 128, 192
TOLERANCE = 1e-6
# The file was recorded with torch on 2 threads. A convolution's sums run in another
# order on another thread count (1 thread: up to 2e-3 px on a box), so the check runs on 2.
RECORDED_THREADS = 2
# Today's parameter names -> the recorded layout's (VotingRCNN owned the context
# head and mu; levels were "stages"; FC layers were plain nn.Sequential).
RENAMES = (
    (r"^roi_heads\.context_head\.predictor\.", "context_head."),
    (r"^roi_heads\.context_head\.", "context_head."),
    (r"^roi_heads\.fusion_logit$", "fusion_logit"),
    (r"^roi_heads\.levels\.", "roi_heads.stages."),
    (r"\.(fc|fc_g1|fc_g2)\.fc1\.", r".\1.1."),
    (r"\.(fc|fc_g1|fc_g2)\.fc2\.", r".\1.3."),
)


def recorded_name(name: str) -> str:
    for pattern, old in RENAMES:
        name = re.sub(pattern, old, name)
    return name


def small_cfg(config: str):
    return setup_cfg(
        os.path.join(CONFIG_DIR, config),
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.VOTING.NUM_PRIMITIVES", "8",
            "MODEL.VOTING.GRID_SIZES", "[[3, 8], [4, 12]]",
            "MODEL.VOTING.FC_DIMS", "[32]",
            "MODEL.CONTEXT.FC_G1_DIMS", "[16]",
            "MODEL.CONTEXT.FC_G2_DIMS", "[16]",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "20",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "10",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "MODEL.EXPLAIN.ENABLED", "True",
            "MODEL.EXPLAIN.TOP_PRIMITIVES", "3",
            "MODEL.EXPLAIN.RANK_BY", "alpha",  # the ranking the golden was recorded with
        ],
    )


def fill_weights(model) -> None:
    """Every floating tensor of the state dict from a generator seeded by the
    CRC32 of its recorded name: He-scaled normals for matrices and kernels,
    1 + small noise for normalisation scales and variances, small noise else."""
    state = model.state_dict()
    filled = {}
    for name, value in state.items():
        if not value.is_floating_point():
            filled[name] = value
            continue
        g = torch.Generator().manual_seed(zlib.crc32(recorded_name(name).encode()))
        noise = torch.randn(value.shape, generator=g, dtype=torch.float64)
        if value.dim() >= 2:
            fan_in = max(1, value[0].numel())
            new = noise * (2.0 / fan_in) ** 0.5
        elif name.endswith("running_var"):
            new = 1.0 + 0.1 * noise.abs()
        elif name.endswith("norm.weight"):
            new = 1.0 + 0.1 * noise
        else:
            new = 0.1 * noise
        filled[name] = new.to(value.dtype)
    model.load_state_dict(filled)


def drawn_batch():
    """Two 128x192 grey scans: speckle, a dark band between two bright lines
    (an NT-like structure) in the first, none in the second."""
    g = torch.Generator().manual_seed(0)
    images = []
    for has_nt in (True, False):
        image = torch.rand((H, W), generator=g) * 60 + 40
        if has_nt:
            image[88:90, 40:150] = 230
            image[90:102, 40:150] = 15
            image[102:104, 40:150] = 230
        images.append(image.round().to(torch.uint8).expand(3, H, W).clone())
    targets = []
    for boxes in ([[40.0, 90.0, 150.0, 102.0]], []):
        inst = Instances((H, W))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
        targets.append(inst)
    return [{"image": im, "instances": t, "height": H, "width": W} for im, t in zip(images, targets)]


def run(method: str):
    """Training losses (one forward, seeded) and inference fields of ``method``."""
    torch.manual_seed(0)
    model = build_model(small_cfg(CONFIGS[method]))
    fill_weights(model)
    batch = drawn_batch()
    model.train()
    torch.manual_seed(1)
    with EventStorage():
        losses = model(batch)
    out = {f"loss/{k}": v.detach().double() for k, v in losses.items()}
    model.eval()
    with torch.no_grad():
        results = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    for i, r in enumerate(results):
        inst = r["instances"]
        out[f"image{i}/pred_boxes"] = inst.pred_boxes.tensor.double()
        out[f"image{i}/scores"] = inst.scores.double()
        out[f"image{i}/pred_classes"] = inst.pred_classes.double()
        if i == 0:  # the trace of the top detection, every field
            for name, value in inst.get_fields().items():
                if name.startswith("trace_") or name in ("mu", "local_boxes", "global_boxes", "context_boxes",
                                                         "deformed_context_boxes", "local_probs", "global_probs",
                                                         "proposal_boxes"):
                    out[f"image0/top/{name}"] = value[:1].double()
    return out


def record() -> None:
    golden = {method: run(method) for method in CONFIGS}
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    torch.save(golden, GOLDEN)
    print(f"recorded {sum(len(v) for v in golden.values())} tensors to {GOLDEN}")


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_outputs_equal_the_recorded_golden(method):
    golden = torch.load(GOLDEN, weights_only=True)[method]
    now = run(method)
    assert sorted(now) == sorted(golden), "the set of losses / fields changed"
    assert len(golden["image0/scores"]) > 0, "the golden holds no detection to compare"
    for name, expected in golden.items():
        got = now[name]
        assert got.shape == expected.shape, name
        assert torch.allclose(got, expected, atol=TOLERANCE, rtol=0), (
            f"{method} {name}: max difference {(got - expected).abs().max().item():.3g}"
        )


if __name__ == "__main__" and "--record" in sys.argv:
    torch.set_num_threads(RECORDED_THREADS)
    record()
