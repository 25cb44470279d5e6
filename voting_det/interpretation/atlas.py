"""The primitive atlas (the paper's Fig. 3): what each learned primitive looks
for and where it votes.

Over a data set, every image goes through the model in trace mode; for its top
detection we record, per level and primitive k, the trace-back score alpha_k,
the share c_k / Phi(x_hat) of the vote at the predicted centre, and where in the
crop k responds most (its peak response and that cell's centre). Then, per
primitive, a page shows the image patches where it responded most over the
whole set (each patch is the theoretical receptive field of the cell, the red
box the cell's ROI bin) and its spatial template D_k; a summary page shows the
most used primitives (by mean alpha_k on correct detections, i.e. top
detections with IoU > 0.5 with a ground-truth box); ``index.html`` links
everything and opens offline in a browser.
"""
import html
import os
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from detectron2.modeling.backbone.resnet import BasicStem
from detectron2.structures import Boxes, pairwise_iou
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm import tqdm

from ..modeling import TRACE_PREFIX
from .trace import Explainer, check_new_paths, gt_boxes, load_image, save_json, to_jsonable

__all__ = [
    "ATLAS_RANKINGS",
    "INDEX_FILENAME",
    "collect_atlas",
    "primitive_page_path",
    "receptive_field",
    "render_atlas",
    "usage_order",
]

INDEX_FILENAME = "index.html"
SUMMARY_FILENAME = "summary.png"
DATA_FILENAME = "atlas.json"
# A top detection is correct when its IoU with a ground-truth box exceeds this (docs/method.md section 5).
CORRECT_IOU = 0.5
# Patches per primitive page and on the summary page; primitives on the summary page per level.
DEFAULT_PATCHES = 8
SUMMARY_PATCHES = 5
DEFAULT_SUMMARY_PRIMITIVES = 6
# Side of a drawn patch in pixels.
PATCH_PIXELS = 160
# Max-pool of detectron2's BasicStem: kernel 3, stride 2.
_STEM_POOL = (3, 2, 1)


def receptive_field(backbone, level: str) -> Tuple[int, int]:
    """Theoretical receptive field (side in input pixels) and stride of one cell
    of a detectron2 ResNet's ``level`` output, from its convolutions (and the
    stem's max-pool): ``rf += (k - 1) * dilation * jump; jump *= stride``."""
    stem = backbone.stem
    layers = [(stem.conv1.kernel_size[0], stem.conv1.stride[0], stem.conv1.dilation[0])]
    if isinstance(stem, BasicStem):
        layers.append(_STEM_POOL)
    for name, stage in zip(backbone.stage_names, backbone.stages):
        for block in stage:
            for attr in ("conv1", "conv2", "conv3"):
                conv = getattr(block, attr, None)
                if conv is not None:
                    layers.append((conv.kernel_size[0], conv.stride[0], conv.dilation[0]))
        if name == level:
            break
    else:
        raise ValueError(f"level {level!r} is not an output of the backbone {list(backbone.stage_names)}")
    size, jump = 1, 1
    for kernel, stride, dilation in layers:
        size += (kernel - 1) * dilation * jump
        jump *= stride
    return size, jump


def collect_atlas(explainer: Explainer, records: Sequence[Dict], progress: bool = True) -> Dict:
    """Trace the top detection of every image of ``records`` (detectron2 dicts:
    ``file_name``, optional ``annotations``; records without the key
    ``annotations`` count as not annotated).

    Returns a JSON-serialisable dict: ``levels``, ``num_primitives``,
    ``receptive_field`` (input px per level), ``images`` (file, scale,
    correct: true/false/null), and per level ``alpha``, ``share`` (c_k /
    Phi(x_hat)), ``peak_response``, ``peak_points`` (image xy) and
    ``cell_size`` (image px per cell) per image; ``templates`` (D_k of all K).
    """
    levels = explainer.levels
    stages = dict(zip(levels, explainer.model.roi_heads.levels))
    data = {
        "levels": levels,
        "num_primitives": explainer.num_primitives,
        "receptive_field": {lvl: receptive_field(explainer.model.backbone, lvl)[0] for lvl in levels},
        "images": [],
        "skipped": [],
        "per_level": {lvl: {"alpha": [], "share": [], "peak_response": [], "peak_points": [], "cell_size": []}
                      for lvl in levels},
        "templates": {lvl: stages[lvl].primitives.spatial_templates().detach().cpu().numpy() for lvl in levels},
    }
    for record in tqdm(records, desc="atlas", unit="image", disable=not progress):
        image = load_image(record["file_name"])
        explanation = explainer(image)
        inst = explanation.instances
        if not len(inst):
            data["skipped"].append(record["file_name"])
            continue
        correct = None
        if "annotations" in record:
            gts = gt_boxes(record) or []
            correct = bool(gts) and float(
                pairwise_iou(inst.pred_boxes[:1], Boxes(np.asarray(gts, dtype=np.float32))).max()) > CORRECT_IOU
        data["images"].append({"file": record["file_name"], "scale": list(explanation.scale), "correct": correct})
        for lvl in levels:
            get = lambda name: inst.get(f"{TRACE_PREFIX}{lvl}_{name}")[0].numpy()  # noqa: E731
            total = float(get("vote_at_centre"))
            crop = get("crop_boxes")
            m, n = stages[lvl].grid_size
            entry = data["per_level"][lvl]
            entry["alpha"].append(get("alpha"))
            entry["share"].append(get("contributions") / total if total > 0 else np.zeros_like(get("contributions")))
            entry["peak_response"].append(get("peak_response"))
            entry["peak_points"].append(get("peak_points"))
            entry["cell_size"].append([(crop[2] - crop[0]) / n, (crop[3] - crop[1]) / m])
    for lvl in levels:
        data["per_level"][lvl] = {k: np.asarray(v, dtype=float) for k, v in data["per_level"][lvl].items()}
    return data


def _usage(data: Dict, lvl: str) -> Dict[str, np.ndarray]:
    """Mean alpha and share per primitive on correct detections (all top
    detections when no image is correct or annotated), and how often each
    primitive is in an image's top 5 by alpha."""
    entry = data["per_level"][lvl]
    correct = np.array([img["correct"] is True for img in data["images"]], dtype=bool)
    on = correct if correct.any() else np.ones(len(correct), dtype=bool)
    k = data["num_primitives"][lvl]
    alpha = entry["alpha"].reshape(-1, k)
    share = entry["share"].reshape(-1, k)
    return {
        "mean_alpha": alpha[on].mean(axis=0) if on.any() else np.zeros(k),
        "mean_alpha_all": alpha.mean(axis=0) if len(alpha) else np.zeros(k),
        "mean_share": share[on].mean(axis=0) if on.any() else np.zeros(k),
        "fires": (entry["peak_response"].reshape(-1, k) > 0).sum(axis=0),
        "on_correct": bool(correct.any()),
        "num_used": int(on.sum()),
    }


def _patch(image: np.ndarray, point, side: float, cell) -> Tuple[np.ndarray, List[float]]:
    """A square ``side`` x ``side`` patch (image px) centred on ``point``,
    resampled to PATCH_PIXELS, black outside the image; and the cell's bin
    (centred on the point) in patch pixels."""
    scale = PATCH_PIXELS / side
    x, y = point
    matrix = np.float32([[scale, 0, PATCH_PIXELS / 2 - scale * x], [0, scale, PATCH_PIXELS / 2 - scale * y]])
    patch = cv2.warpAffine(image, matrix, (PATCH_PIXELS, PATCH_PIXELS), flags=cv2.INTER_AREA,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    cw, ch = cell[0] * scale, cell[1] * scale
    c = PATCH_PIXELS / 2
    return patch[:, :, ::-1], [c - cw / 2, c - ch / 2, c + cw / 2, c + ch / 2]


# How the summary page and the index rank the primitives: mean alpha_k on correct
# detections (the paper's "most used"), or their mean share of the vote c_k / Phi(x_hat).
ATLAS_RANKINGS = ("alpha", "share")
_KEY_NAMES = {"alpha": "alpha_k", "share": "vote share"}


def usage_order(usage: Dict[str, np.ndarray], rank_by: str = "alpha") -> np.ndarray:
    """Primitives by mean alpha (or mean vote share) on correct detections, best
    first; ties (alpha saturates at 1 for a primitive responding in every cell
    of the crop) broken by the other one."""
    if rank_by not in ATLAS_RANKINGS:
        raise ValueError(f"--rank-by must be one of {ATLAS_RANKINGS}, got {rank_by!r}")
    alpha, share = -usage["mean_alpha"], -usage["mean_share"]
    return np.lexsort((share, alpha) if rank_by == "alpha" else (alpha, share))


def _best_images(data: Dict, lvl: str, k: int, count: int) -> List[int]:
    response = data["per_level"][lvl]["peak_response"][:, k]
    order = np.argsort(-response, kind="stable")
    return [int(i) for i in order[:count] if response[i] > 0]


def _draw_patches(axes, data, lvl, k, images_cache):
    entry = data["per_level"][lvl]
    chosen = _best_images(data, lvl, k, len(axes))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("#dddddd")
    for ax, i in zip(axes, chosen):
        info = data["images"][i]
        if info["file"] not in images_cache:
            images_cache[info["file"]] = load_image(info["file"])
        side = data["receptive_field"][lvl] * max(info["scale"])
        patch, bin_box = _patch(images_cache[info["file"]], entry["peak_points"][i, k], side, entry["cell_size"][i])
        ax.imshow(patch)
        ax.add_patch(Rectangle(bin_box[:2], bin_box[2] - bin_box[0], bin_box[3] - bin_box[1], fill=False,
                               edgecolor="red", linewidth=1.5))
        mark = {True: "correct", False: "wrong", None: ""}[info["correct"]]
        ax.set_title(f"{os.path.basename(info['file'])} {mark}\nRs {entry['peak_response'][i, k]:.2f}", fontsize=7)
    return len(chosen)


def _draw_template(ax, data, lvl, k):
    template = data["templates"][lvl][k]
    hd, wd = template.shape
    cw, ch = np.median(data["per_level"][lvl]["cell_size"], axis=0) if len(data["images"]) else (1.0, 1.0)
    extent = (-wd / 2 * cw, wd / 2 * cw, hd / 2 * ch, -hd / 2 * ch)
    im = ax.imshow(template, extent=extent, cmap="magma", vmin=0, interpolation="nearest")
    dy = (np.arange(hd) - hd // 2) * ch
    dx = (np.arange(wd) - wd // 2) * cw
    mass = template.sum()
    mx, my = (template.sum(0) * dx).sum() / mass, (template.sum(1) * dy).sum() / mass
    ax.annotate("", xy=(mx, my), xytext=(0, 0), arrowprops=dict(arrowstyle="->", color="cyan", linewidth=1.6))
    ax.plot(0, 0, marker="+", color="white", markersize=10, markeredgewidth=2)
    ax.set_title(f"D_{k}: where it votes (px, median cell)\n+ = itself, arrow = mean vote", fontsize=7)
    ax.tick_params(labelsize=6)
    return im


def primitive_page_path(lvl: str, k: int) -> str:
    """Relative path of primitive ``k``'s page below the atlas folder."""
    return f"{lvl}/primitive_{k:03d}.png"


def _primitive_page(data, lvl, k, usage, rank, path, num_patches, cache, rank_by):
    fig = Figure(figsize=(2.0 * num_patches + 3.4, 2.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, num_patches + 1, gridspec_kw={"width_ratios": [1] * num_patches + [1.7]})
    shown = _draw_patches(axes[:num_patches], data, lvl, k, cache)
    im = _draw_template(axes[-1], data, lvl, k)
    fig.colorbar(im, ax=axes[-1], location="bottom", shrink=0.9).ax.tick_params(labelsize=6)
    on = "correct detections" if usage["on_correct"] else "all top detections (none marked correct)"
    fig.suptitle(
        f"{lvl} primitive {k}: rank {rank + 1} by mean {_KEY_NAMES[rank_by]} on {on}; "
        f"mean alpha {usage['mean_alpha'][k]:.3f}, mean vote share {usage['mean_share'][k]:.1%}; "
        f"responds in {usage['fires'][k]} of "
        f"{len(data['images'])} images\nPatches: where it responds most, each the cell's receptive field "
        f"({data['receptive_field'][lvl]} input px); red: the cell's ROI bin"
        + ("" if shown else ". It never responds."),
        fontsize=9,
    )
    fig.savefig(path)


def _summary_page(data, usages, path, num_primitives, cache, rank_by):
    levels = data["levels"]
    rows = [(lvl, k) for lvl in levels for k in usage_order(usages[lvl], rank_by)[:num_primitives]]
    fig = Figure(figsize=(2.0 * SUMMARY_PATCHES + 3.6, 2.2 * len(levels) + 2.15 * len(rows)), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    subs = fig.subfigures(2, 1, height_ratios=[2.2 * len(levels), 2.15 * len(rows)])
    bar_axes = subs[0].subplots(len(levels), 1, squeeze=False)[:, 0]
    for ax, lvl in zip(bar_axes, levels):
        usage = usages[lvl]
        order = usage_order(usage, rank_by)
        x = np.arange(len(order))
        bars = ax.bar(x, usage["mean_alpha"][order], color="tab:blue", width=0.85, label="mean alpha_k (left axis)")
        ax.set_ylabel("mean alpha_k", fontsize=8, color="tab:blue")
        ax.set_ylim(0, 1.05)
        twin = ax.twinx()
        dots = twin.plot(x, usage["mean_share"][order] * 100, "o", color="tab:red", markersize=3,
                         label="mean share of the vote c_k / Phi(x^), % (right axis)")
        twin.set_ylabel("vote share (%)", fontsize=8, color="tab:red")
        twin.set_ylim(0, max(1e-6, float(usage["mean_share"].max()) * 100 * 1.15))
        ax.set_xticks(x)
        ax.set_xticklabels([str(k) for k in order], fontsize=5, rotation=90)
        ax.set_xlim(-1, len(order))
        on = "correct detections" if usage["on_correct"] else "all top detections"
        ax.set_title(f"{lvl}: primitives sorted by mean {_KEY_NAMES[rank_by]} on {usage['num_used']} {on}", fontsize=10)
        ax.legend(handles=[bars] + dots, fontsize=8, loc="upper right")
    grid = subs[1].subplots(len(rows), SUMMARY_PATCHES + 1, squeeze=False,
                            gridspec_kw={"width_ratios": [1] * SUMMARY_PATCHES + [1.7]})
    for (lvl, k), axes in zip(rows, grid):
        _draw_patches(axes[:SUMMARY_PATCHES], data, lvl, int(k), cache)
        _draw_template(axes[-1], data, lvl, int(k))
        axes[0].set_ylabel(f"{lvl} k={k}\nalpha {usages[lvl]['mean_alpha'][k]:.2f}\n"
                           f"share {usages[lvl]['mean_share'][k]:.1%}", rotation=0, ha="right", va="center",
                           fontsize=8)
    subs[1].suptitle(f"The {num_primitives} most used primitives per level: where they respond most "
                     "(receptive field; red: ROI bin) and their spatial templates", fontsize=10)
    fig.savefig(path)


def _index_html(data, usages, title: str, rank_by: str) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} img{max-width:100%}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p>{len(data['images'])} images traced ({len(data['skipped'])} without a detection skipped). "
             "For every image the top detection is explained; a detection is <i>correct</i> when its IoU with a "
             "ground-truth box exceeds 0.5. alpha_k is the trace-back score of Eq. 3; the vote share is "
             "c_k / Phi(x^), primitive k's part of the vote at the predicted centre. Each primitive page shows the "
             "image patches where it responds most (the cell's theoretical receptive field; the red box is the "
             "cell's ROI bin) and its spatial template D_k (where it votes, relative to itself).</p>",
             f"<h2>Most used primitives</h2><p><a href='{SUMMARY_FILENAME}'><img src='{SUMMARY_FILENAME}'></a></p>"]
    for lvl in data["levels"]:
        usage = usages[lvl]
        on = "correct detections" if usage["on_correct"] else "all top detections (none marked correct)"
        parts.append(f"<h2>{esc(lvl)}: {data['num_primitives'][lvl]} primitives, receptive field "
                     f"{data['receptive_field'][lvl]} input px</h2>"
                     f"<p>Sorted by mean {_KEY_NAMES[rank_by]} on {esc(on)}.</p>")
        parts.append("<table><tr><th>rank</th><th>primitive</th><th>mean alpha (correct)</th>"
                     "<th>mean alpha (all)</th><th>mean vote share</th><th>responds in images</th></tr>")
        for rank, k in enumerate(usage_order(usage, rank_by)):
            page = primitive_page_path(lvl, int(k))
            parts.append(f"<tr><td>{rank + 1}</td><td><a href='{page}'>{lvl} #{k}</a></td>"
                         f"<td>{usage['mean_alpha'][k]:.3f}</td><td>{usage['mean_alpha_all'][k]:.3f}</td>"
                         f"<td>{usage['mean_share'][k]:.2%}</td><td>{usage['fires'][k]}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def render_atlas(
    data: Dict,
    out_dir: str,
    num_patches: int = DEFAULT_PATCHES,
    summary_primitives: int = DEFAULT_SUMMARY_PRIMITIVES,
    title: str = "voting_det primitive atlas",
    rank_by: str = "alpha",
    overwrite: bool = False,
    progress: bool = True,
) -> List[str]:
    """Write the atlas of :func:`collect_atlas`'s ``data`` to ``out_dir``:
    ``index.html``, ``summary.png``, ``<level>/primitive_<k>.png`` for every
    primitive and ``atlas.json`` (the numbers). ``rank_by`` (one of
    :data:`ATLAS_RANKINGS`) orders the summary and the index. Existing files
    are refused unless ``overwrite``; no other file in ``out_dir`` is touched.

    Returns the written paths (index first)."""
    if not data["images"]:
        raise ValueError("no image had a detection: the atlas would be empty")
    levels = data["levels"]
    pages = [os.path.join(out_dir, primitive_page_path(lvl, k)) for lvl in levels
             for k in range(data["num_primitives"][lvl])]
    paths = [os.path.join(out_dir, INDEX_FILENAME), os.path.join(out_dir, SUMMARY_FILENAME),
             os.path.join(out_dir, DATA_FILENAME)] + pages
    if rank_by not in ATLAS_RANKINGS:
        raise ValueError(f"--rank-by must be one of {ATLAS_RANKINGS}, got {rank_by!r}")
    check_new_paths(paths, overwrite)
    for lvl in levels:
        os.makedirs(os.path.join(out_dir, lvl), exist_ok=True)
    usages = {lvl: _usage(data, lvl) for lvl in levels}
    cache: Dict[str, np.ndarray] = {}
    _summary_page(data, usages, paths[1], min(summary_primitives, min(data["num_primitives"].values())), cache,
                  rank_by)
    jobs = [(lvl, int(k), rank) for lvl in levels
            for rank, k in enumerate(usage_order(usages[lvl], rank_by))]
    for lvl, k, rank in tqdm(jobs, desc="atlas pages", unit="page", disable=not progress):
        _primitive_page(data, lvl, k, usages[lvl], rank, os.path.join(out_dir, primitive_page_path(lvl, k)),
                        num_patches, cache, rank_by)
    save_json(paths[2], {**to_jsonable({k: v for k, v in data.items() if k != "templates"}),
                         "usage": to_jsonable(usages)}, overwrite=overwrite)
    with open(paths[0], "w", encoding="utf-8") as f:
        f.write(_index_html(data, usages, title, rank_by))
    return paths
