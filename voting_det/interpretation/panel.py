"""One prediction's voting process as a figure (the paper's Fig. 4), drawn from
a JSON trace (:func:`voting_det.interpretation.image_trace`).

The page, top to bottom:

1. one plain-language line (:func:`explanation_line`: which primitives placed
   the box and where they respond most), then the image with the boxes of the prediction: proposal x_p, each level's box
   (coarse x_p', fine x_L), the context branch's x_G, the fused final box, the
   context boxes before (dashed) and after (solid) the deformation, and the
   ground truth when known; beside it a zoom on the structure;
2. per level, every primitive's trace-back score alpha_k (Eq. 3) and its
   share of the vote at the predicted centre, c_k / Phi(x_hat) (the shares sum
   to 100%); the top primitives are highlighted;
3. per level, the vote heatmap Phi and the location probabilities p over the
   crop, then for each top primitive: its response map Rs_k, its spatial
   template D_k (where it votes, relative to itself), its vote Phi_k and its
   reconstruction Rc_k (Eq. 3), each column on one colour scale.

Drawn with matplotlib's object API (no global backend change).
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

__all__ = ["BOX_STYLES", "explanation_line", "peak_place", "render_panel"]

# Line styles of the boxes: (colour, line style, line width).
BOX_STYLES = {
    "gt": ("lime", "-", 1.6),
    "proposal": ("white", "--", 1.2),
    "coarse": ("cyan", "-", 1.2),
    "local": ("yellow", "-", 1.4),
    "global": ("magenta", "-", 1.2),
    "final": ("red", "-", 2.2),
    "context": ("lightskyblue", ":", 1.0),
    "deformed": ("deepskyblue", "-", 1.2),
}
# Colour maps of the four map columns and of Phi / p.
MAP_CMAPS = {"response_maps": "viridis", "spatial_templates": "magma", "primitive_votes": "inferno",
             "reconstructions": "plasma", "vote_heatmap": "inferno", "probabilities": "viridis"}
# Opacity of a map drawn over the image.
MAP_ALPHA = 0.7
# Margin around the boxes of the zoomed view, as a fraction of their extent.
ZOOM_MARGIN = 0.25
# Figure width and the heights of its parts, in inches.
FIG_WIDTH = 15.0
TOP_HEIGHT = 5.2
BARS_HEIGHT = 1.9
LEVEL_HEADER_HEIGHT = 1.7
PRIMITIVE_ROW_HEIGHT = 1.05
COLORBAR_HEIGHT = 0.55
DPI = 100
HIGHLIGHT = "tab:orange"
PLAIN = "tab:blue"


# Primitives per level named in the panel's plain-language line.
LINE_PRIMITIVES = 3
# Second key of each ranking (ties of the first are broken by it), as the x-labels say it.
TIE_BREAK_NAMES = {"alpha": "vote share", "contribution": "alpha", "contrastive": "vote share"}


def peak_place(point: Sequence[float], box: Sequence[float]) -> str:
    """Where a primitive's strongest response ``point`` (x, y) lies relative
    to ``box`` (XYXY), in words: left of / right of the box when clearly
    beside it, else above it, on its upper edge, inside it, on its lower edge
    or below it (bands of a quarter (edges) and half (beyond) the box height
    around its top and bottom)."""
    x, y = point
    x0, y0, x1, y1 = box
    w, h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    if x < x0 - 0.1 * w:
        return "left of it"
    if x > x1 + 0.1 * w:
        return "right of it"
    if y < y0 - 0.5 * h:
        return "above it"
    if y < y0 + 0.25 * h:
        return "on its upper edge"
    if y <= y1 - 0.25 * h:
        return "inside it"
    if y <= y1 + 0.5 * h:
        return "on its lower edge"
    return "below it"


_PLACE_ORDER = ("on its upper edge", "inside it", "on its lower edge", "above it", "below it", "left of it",
                "right of it")
# Font size of the panel's line, and the length (characters) above which it shrinks to stay one line.
LINE_FONT_SIZE = 10.5
LINE_FITS_CHARS = 170
LINE_MIN_FONT_SIZE = 7.5


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def explanation_line(trace: Dict, detection: int = 0, per_level: int = LINE_PRIMITIVES) -> str:
    """One plain-language sentence for the panel's top row: which primitives
    (the first ``per_level`` of each level's ranking) placed the box, the
    share of the vote at the centre they carry (for the contrastive ranking:
    how many percentage points more than on a typical training image), and
    where they respond most relative to the final box (:func:`peak_place` of
    their peak points)."""
    det = trace["detections"][detection]
    rank_by = (trace.get("options") or {}).get("rank_by", "alpha")
    levels = trace["levels"]
    qualify = len(levels) > 1  # name the level beside each primitive where several levels share numbers
    parts, places = [], {}
    for lvl in levels:
        tr = det["levels"][lvl]
        chosen = [int(k) for k in tr["top_primitives"][:per_level]]
        if not chosen:
            continue
        contrib = np.asarray(tr["contributions"], dtype=float)
        total = float(tr["vote_at_centre"])
        if rank_by == "contrastive" and tr.get("contrastive") is not None:
            extra = 100 * float(np.asarray(tr["contrastive"], dtype=float)[chosen].sum())
            amount = f"{extra:+.1f} points of the vote at the centre" if not parts else f"{extra:+.1f}"
        else:
            share = contrib[chosen].sum() / total if total > 0 else 0.0
            amount = f"{share:.0%} of the vote at the centre" if not parts else f"{share:.0%}"
        parts.append(f"{lvl} {', '.join(map(str, chosen))} ({amount})")
        for k in chosen:
            places.setdefault(peak_place(tr["peak_points"][k], det["box"]), {}).setdefault(lvl, []).append(str(k))
    if not parts:
        return ""
    names = "primitives " + _and(parts)
    if rank_by == "contrastive":
        head = f"Compared with a typical image, {names} voted more for this box"
    elif rank_by == "alpha":
        head = f"Highest trace-back score α: {names}"
    else:
        head = f"{names[0].upper()}{names[1:]} placed the box"
    where = []
    for place in _PLACE_ORDER:
        if place in places:
            ks = "; ".join(f"{lvl} {', '.join(ks)}" if qualify else ", ".join(ks) for lvl, ks in places[place].items())
            where.append(f"{place} ({ks})")
    return f"{head}; they match best {_and(where)}." + border_line(det, levels[-1])


def _level_roles(levels: Sequence[str]) -> Dict[str, str]:
    """Legend text of each level's box: the last level gives x_L."""
    roles = {}
    for i, level in enumerate(levels):
        if i < len(levels) - 1:
            roles[level] = f"$x_p'$: {level} box (coarse)"
        else:
            roles[level] = f"$x_L$: {level} box (local{', fine' if len(levels) > 1 else ''})"
    return roles


def _box(ax, box, style: str, label: Optional[str] = None, zorder: int = 3):
    colour, ls, lw = BOX_STYLES[style]
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linestyle=ls, linewidth=lw,
                           zorder=zorder, label=label))


def _handle(style: str, label: str) -> Line2D:
    colour, ls, lw = BOX_STYLES[style]
    return Line2D([], [], color=colour, linestyle=ls, linewidth=lw + 0.6, label=label)


def _show_image(ax, rgb: np.ndarray, region) -> None:
    """The part of the image inside ``region`` (x0, y0, x1, y1), black outside it."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = region
    c0, r0 = int(np.clip(np.floor(x0), 0, w)), int(np.clip(np.floor(y0), 0, h))
    c1, r1 = int(np.clip(np.ceil(x1), 0, w)), int(np.clip(np.ceil(y1), 0, h))
    ax.set_facecolor("black")
    if c1 > c0 and r1 > r0:
        ax.imshow(rgb[r0:r1, c0:c1], extent=(c0, c1, r1, r0), interpolation="bilinear")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")


def _map_on_crop(ax, rgb, crop, values, cmap, vmax, centre):
    """``values`` (M, N) drawn over the crop box of the image; zeros transparent."""
    _show_image(ax, rgb, crop)
    x0, y0, x1, y1 = crop
    masked = np.ma.masked_less_equal(values, 0)
    im = ax.imshow(masked, extent=(x0, x1, y1, y0), cmap=cmap, vmin=0, vmax=max(vmax, 1e-12), alpha=MAP_ALPHA,
                   interpolation="nearest")
    ax.plot(*centre, marker="+", color="white", markersize=11, markeredgewidth=2.2, zorder=5)
    ax.plot(*centre, marker="+", color="black", markersize=7, markeredgewidth=1.0, zorder=6)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _template(ax, template: np.ndarray, cell_size, vmax: float):
    """D_k in displacement pixels (cell sizes of this crop), origin marked,
    arrow to its centre of mass (the mean vote)."""
    hd, wd = template.shape
    cw, ch = cell_size
    extent = (-wd / 2 * cw, wd / 2 * cw, hd / 2 * ch, -hd / 2 * ch)
    im = ax.imshow(template, extent=extent, cmap=MAP_CMAPS["spatial_templates"], vmin=0, vmax=max(vmax, 1e-12),
                   interpolation="nearest")
    dy = (np.arange(hd) - hd // 2) * ch
    dx = (np.arange(wd) - wd // 2) * cw
    mass = template.sum()
    if mass > 0:
        mx, my = (template.sum(0) * dx).sum() / mass, (template.sum(1) * dy).sum() / mass
        ax.annotate("", xy=(mx, my), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color="cyan", linewidth=1.6))
    ax.plot(0, 0, marker="+", color="white", markersize=10, markeredgewidth=2)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=6, length=2, pad=1)
    return im


def _zoom_region(boxes: List, image_size) -> List[float]:
    arr = np.asarray([b for b in boxes if b is not None], dtype=float)
    x0, y0 = arr[:, 0].min(), arr[:, 1].min()
    x1, y1 = arr[:, 2].max(), arr[:, 3].max()
    mx, my = (x1 - x0) * ZOOM_MARGIN, (y1 - y0) * ZOOM_MARGIN
    side = max(x1 - x0 + 2 * mx, (y1 - y0 + 2 * my) * 1.6)  # keep the zoom wide enough to read
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    height = max(y1 - y0 + 2 * my, side / 1.6)
    return [cx - side / 2, cy - height / 2, cx + side / 2, cy + height / 2]


def _draw_top(sub, rgb, trace, det, gt_boxes, roles):
    levels = trace["levels"]
    ax_full, ax_zoom = sub.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    h, w = rgb.shape[:2]
    handles = []
    for ax, zoom in ((ax_full, False), (ax_zoom, True)):
        if zoom:
            region = _zoom_region([det["proposal_box"], det["box"], det["global"] and det["global"]["box"]]
                                  + [det["levels"][lvl]["boxes"] for lvl in levels] + list(gt_boxes or []), (h, w))
        else:
            region = [0, 0, w, h]
        _show_image(ax, rgb, region)
        ax.set_xticks([])
        ax.set_yticks([])
        if not zoom and det.get("context_boxes") is not None:
            for o, (before, after) in enumerate(zip(det["context_boxes"], det["deformed_context_boxes"])):
                _box(ax, before, "context")
                _box(ax, after, "deformed")
                # label inside the image even when the box reaches beyond it
                tx, ty = np.clip(after[0], 0, w - 1) + 4, np.clip(after[1], 0, h - 1) + 4
                ax.text(tx, ty, f"o{o + 1}", color=BOX_STYLES["deformed"][0], fontsize=8, va="top", ha="left",
                        zorder=4, clip_on=True)
        for gt in gt_boxes or []:
            _box(ax, gt, "gt")
        _box(ax, det["proposal_box"], "proposal")
        for lvl in levels:
            _box(ax, det["levels"][lvl]["boxes"], "local" if lvl == levels[-1] else "coarse")
            if zoom:
                cx, cy = det["levels"][lvl]["centres"]
                colour = BOX_STYLES["local" if lvl == levels[-1] else "coarse"][0]
                ax.plot(cx, cy, marker="x", color=colour, markersize=8, markeredgewidth=2)
                if lvl == levels[-1]:
                    _draw_borders(ax, det["levels"][lvl], colour)
        if zoom:
            _draw_calipers(ax, det)
        if det["global"] is not None:
            _box(ax, det["global"]["box"], "global")
        _box(ax, det["box"], "final", zorder=4)
    ax_full.set_title("whole image", fontsize=10)
    measured = thickness_text(det)
    ax_zoom.set_title("zoom (x: soft-argmax centre of each level, in its colour"
                      + ("; +: calipers of the thickness)" if measured else ")"), fontsize=10)
    if gt_boxes:
        handles.append(_handle("gt", "ground truth"))
    elif gt_boxes is not None:
        handles.append(Line2D([], [], color="none", label="no ground-truth box in this image"))
    handles.append(_handle("proposal", "$x_p$: proposal (RPN)"))
    for lvl in levels:
        handles.append(_handle("local" if lvl == levels[-1] else "coarse", roles[lvl]))
    if det["global"] is not None:
        handles.append(_handle("global", "$x_G$: context branch"))
        handles.append(_handle("final", rf"$x = \mu x_L + (1 - \mu) x_G$: final ($\mu$ = {det['mu']:.2f})"))
        handles.append(_handle("context", "context boxes $x_o$ (layout)"))
        handles.append(_handle("deformed", "$x_o'$: after deformation (Eq. 4)"))
    else:
        handles.append(_handle("final", "final box (= $x_L$, no context branch)"))
    sub.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5), fontsize=8.5,
               frameon=False)


CALIPER_COLOUR = "#ffd400"


def thickness_text(det: Dict) -> str:
    """"NT 1.82 mm (18.2 px)", "NT 18.2 px (spacing unknown)" or "" when not measured."""
    px, mm = det.get("thickness_px"), det.get("thickness_mm")
    if px is None:
        return ""
    return f"NT {mm:.2f} mm ({px:.1f} px)" if mm is not None else f"NT {px:.1f} px (pixel spacing unknown)"


def _draw_calipers(ax, det: Dict) -> None:
    """The measurement's two caliper points (+) joined by a line, and the thickness."""
    calipers = det.get("calipers")
    if not calipers or any(v is None for point in calipers for v in point):
        return
    (x0, y0), (x1, y1) = calipers
    ax.plot([x0, x1], [y0, y1], color=CALIPER_COLOUR, linewidth=1.2, zorder=6)
    ax.plot([x0, x1], [y0, y1], linestyle="none", marker="+", markersize=12, markeredgewidth=2,
            color=CALIPER_COLOUR, zorder=6)
    ax.text(x1 + 4, y1 + 4, thickness_text(det), color=CALIPER_COLOUR, fontsize=9, va="top", zorder=6,
            bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"}, clip_on=True)


def _draw_borders(ax, level_trace: Dict, colour: str) -> None:
    """The voted borders of a level (border votes, docs/method.md section 2b)
    as dotted lines across its box: upper and lower, left and right end."""
    borders = level_trace.get("border_positions")
    if not borders:
        return
    x0, y0, x1, y1 = level_trace["boxes"]
    left, top, right, bottom = borders
    for y in (top, bottom):
        if y is not None:
            ax.plot([x0, x1], [y, y], linestyle=":", linewidth=2, color=colour, zorder=5)
    for x in (left, right):
        if x is not None:
            ax.plot([x, x], [y0, y1], linestyle=":", linewidth=2, color=colour, zorder=5)


def border_line(det: Dict, level: str, per_border: int = LINE_PRIMITIVES) -> str:
    """The border votes' half-sentence of the plain-language line: which
    primitives voted most for each border of ``level`` ("" without border votes)."""
    tr = det["levels"][level]
    order = tr.get("border_top_primitives")
    if not order:
        return ""
    names = ("left end", "upper border", "right end", "lower border")
    parts = [f"{names[b]} {', '.join(str(k) for k in order[b][:per_border])}"
             for b in (1, 3, 0, 2) if order[b] and order[b][0] >= 0]
    return f" Borders ({level}) placed by primitives: {'; '.join(parts)}." if parts else ""


def _draw_bars(sub, trace, det, top):
    levels = trace["levels"]
    axes = sub.subplots(len(levels), 2, squeeze=False)
    for row, lvl in enumerate(levels):
        tr = det["levels"][lvl]
        alpha = np.asarray(tr["alpha"], dtype=float)
        contrib = np.asarray(tr["contributions"], dtype=float)
        total = float(tr["vote_at_centre"])
        share = contrib / total if total > 0 else np.zeros_like(contrib)
        chosen = list(tr["top_primitives"][:top])
        colours = [HIGHLIGHT if k in chosen else PLAIN for k in range(len(alpha))]
        for ax, values, title, ylabel in (
            (axes[row, 0], alpha, rf"{lvl}: trace-back score $\alpha_k$ (Eq. 3) of every primitive", r"$\alpha_k$"),
            (axes[row, 1], share * 100, rf"{lvl}: share of the vote at the predicted centre, $c_k / \Phi(\hat x)$ "
                                        "(sums to 100%)", r"$c_k$ share (%)"),
        ):
            ax.bar(np.arange(len(values)), values, color=colours, width=0.85)
            ax.set_xlim(-1, len(values))
            ax.set_title(title, fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            peak = values.max() if len(values) and values.max() > 0 else 1.0
            ax.set_ylim(0, peak * 1.22)
            for k in chosen:
                ax.text(k, values[k] + peak * 0.03, str(k), ha="center", va="bottom", fontsize=7, color=HIGHLIGHT)
        rank_by = trace["options"].get("rank_by", "alpha")
        contrastive = tr.get("contrastive")
        if contrastive is not None:  # the reference: the mean share over the training images
            mean_share = (share - np.asarray(contrastive, dtype=float)) * 100
            axes[row, 1].scatter(np.arange(len(mean_share)), mean_share, marker="_", s=30, color="black",
                                 linewidths=1.2, zorder=3, label="mean share over the training images")
            axes[row, 1].legend(fontsize=7, loc="upper right", frameon=False)
        ranked = {"alpha": alpha, "contribution": contrib}.get(rank_by)
        if ranked is None:
            ranked = np.asarray(contrastive, dtype=float) if contrastive is not None else contrib
        note = ""
        if chosen:
            last = ranked[chosen[-1]]
            tied, shown = int(np.sum(ranked == last)), int(np.sum(ranked[chosen] == last))
            if tied > shown:
                note = (f"; {tied} primitives tie at {last:.2f}, ordered by their "
                        f"{TIE_BREAK_NAMES.get(rank_by, 'second key')}")
        axes[row, 0].set_xlabel(f"primitive k (orange: the top {len(chosen)} by {rank_by}, labelled with k{note})",
                                fontsize=8)
        axes[row, 1].set_xlabel("primitive k", fontsize=8)


def _draw_level(sub, rgb, trace, det, lvl, top, roles):
    tr = det["levels"][lvl]
    chosen = list(tr["top_primitives"][:top])
    rows = len(chosen)
    crop = tr["crop_boxes"]
    phi = np.asarray(tr["vote_heatmap"], dtype=float)
    m, n = phi.shape
    cell = ((crop[2] - crop[0]) / n, (crop[3] - crop[1]) / m)
    centre = tr["centres"]
    gs = sub.add_gridspec(rows + 1, 4, height_ratios=[LEVEL_HEADER_HEIGHT] + [PRIMITIVE_ROW_HEIGHT] * rows)
    total = float(tr["vote_at_centre"])
    contrib = np.asarray(tr["contributions"], dtype=float)
    alpha = np.asarray(tr["alpha"], dtype=float)

    ax_phi, ax_p = sub.add_subplot(gs[0, 0]), sub.add_subplot(gs[0, 1])
    im = _map_on_crop(ax_phi, rgb, crop, phi, MAP_CMAPS["vote_heatmap"], phi.max(), centre)
    sub.colorbar(im, ax=ax_phi, location="left", shrink=0.8, pad=0.01).ax.tick_params(labelsize=6)
    ax_phi.set_title(r"$\Phi$: vote heatmap (mean of all K votes)" + "\n" + r"+ = soft-argmax centre $\hat x$",
                     fontsize=9)
    p = np.asarray(tr["probabilities"], dtype=float)
    im = _map_on_crop(ax_p, rgb, crop, p, MAP_CMAPS["probabilities"], p.max(), centre)
    sub.colorbar(im, ax=ax_p, location="right", shrink=0.8, pad=0.01).ax.tick_params(labelsize=6)
    ax_p.set_title(rf"$p$ = softmax(standardised $\Phi$ / T), T = {tr['temperature']:.2f}", fontsize=9)
    ax_text = sub.add_subplot(gs[0, 2:])
    ax_text.axis("off")
    probs = tr["probs"]
    score = max(probs[:-1]) if len(probs) > 1 else probs[0]
    top_share = contrib[chosen].sum() / total if total > 0 else 0.0
    ax_text.text(
        0.0, 0.95,
        f"{lvl}: {roles[lvl]}\n"
        f"crop = input box enlarged, {m} x {n} cells of {cell[0]:.1f} x {cell[1]:.1f} px\n"
        f"K = {len(alpha)} primitives; {int((alpha > 0).sum())} with α > 0\n"
        f"Φ(x̂) = {total:.3g}; the {rows} shown carry {top_share:.0%} of it\n"
        f"score of this level (FC_L): {score:.2f}\n\n"
        "Each row: one top primitive k. Rs_k: where its semantic template\n"
        "matches; D_k: where it votes, relative to itself (+ = itself,\n"
        "arrow = mean vote); Φ_k = Rs_k ⊛ D_k: its votes; Rc_k: its\n"
        "responses consistent with Φ (Eq. 3). Rank by " + trace["options"].get("rank_by", "alpha") + ".",
        va="top", ha="left", fontsize=9, transform=ax_text.transAxes, family="monospace",
    )

    maps = {name: np.asarray(tr[name], dtype=float) for name in
            ("response_maps", "spatial_templates", "primitive_votes", "reconstructions")}
    vmax = {"response_maps": 1.0}
    for name in ("spatial_templates", "primitive_votes", "reconstructions"):
        vmax[name] = float(maps[name][:rows].max()) if rows else 1.0
    titles = {
        "response_maps": r"$R^s_k$: response (cosine, 0-1)",
        "spatial_templates": r"$D_k$: spatial template (px offsets)",
        "primitive_votes": r"$\Phi_k = R^s_k \ast D_k$: its votes",
        "reconstructions": r"$R^c_k$: trace-back reconstruction",
    }
    columns = {name: [] for name in maps}
    images = {}
    for row, k in enumerate(chosen):
        for col, name in enumerate(maps):
            ax = sub.add_subplot(gs[row + 1, col])
            columns[name].append(ax)
            if name == "spatial_templates":
                images[name] = _template(ax, maps[name][row], cell, vmax[name])
            else:
                images[name] = _map_on_crop(ax, rgb, crop, maps[name][row], MAP_CMAPS[name], vmax[name], centre)
            if row == 0:
                ax.set_title(titles[name], fontsize=9)
            if col == 0:
                share = contrib[k] / total if total > 0 else 0.0
                label = f"k = {k}\nα {alpha[k]:.3f}\nc {share:.0%}"
                if tr.get("contrastive") is not None:  # share minus its training mean, in points
                    label += f"\nΔ {100 * tr['contrastive'][k]:+.1f} pt"
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8.5, labelpad=4)
    for name, axes in columns.items():
        if axes:
            bar = sub.colorbar(images[name], ax=axes, location="bottom", shrink=0.8, aspect=35, pad=0.02)
            bar.ax.tick_params(labelsize=6)
    sub.suptitle(f"{lvl} level", fontsize=11, fontweight="bold", x=0.01, ha="left")


def render_panel(
    image_bgr: np.ndarray,
    trace: Dict,
    path: Optional[str] = None,
    detection: int = 0,
    gt_boxes: Optional[Sequence[Sequence[float]]] = None,
    top: Optional[int] = None,
    title: Optional[str] = None,
) -> Figure:
    """Draw the voting process of one detection of ``trace`` (Fig. 4 style).

    Args:
        image_bgr: the image the trace was made from, ``(H, W, 3)`` uint8 BGR.
        trace: :func:`voting_det.interpretation.image_trace`'s dict (or the JSON read back).
        path: where to save the PNG; None only returns the figure.
        detection: which detection (0 = top-scoring).
        gt_boxes: ground-truth XYXY boxes to draw; None = unknown, [] = the
            image has none (the legend says so).
        top: how many of the trace's top primitives to show (default: all kept).
        title: overrides the page title.

    Returns:
        The matplotlib Figure (already saved when ``path`` is given).
    """
    if not trace["detections"]:
        raise ValueError(f"{trace.get('file')}: the model made no detection, nothing to explain")
    if detection >= len(trace["detections"]):
        raise ValueError(f"detection {detection} requested, the trace has {len(trace['detections'])}")
    det = trace["detections"][detection]
    levels = trace["levels"]
    kept = len(det["levels"][levels[0]]["top_primitives"])
    top = kept if top is None else min(top, kept)
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
    roles = _level_roles(levels)

    level_heights = [LEVEL_HEADER_HEIGHT + PRIMITIVE_ROW_HEIGHT * top + COLORBAR_HEIGHT + 0.3 for _ in levels]
    heights = [TOP_HEIGHT, BARS_HEIGHT * len(levels)] + level_heights
    fig = Figure(figsize=(FIG_WIDTH, sum(heights) + 0.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    subs = fig.subfigures(len(heights), 1, height_ratios=heights)
    _draw_top(subs[0], rgb, trace, det, gt_boxes, roles)
    line = explanation_line(trace, detection)
    if line:
        size = max(LINE_MIN_FONT_SIZE, min(LINE_FONT_SIZE, LINE_FONT_SIZE * LINE_FITS_CHARS / len(line)))
        subs[0].suptitle(line, fontsize=size)
    _draw_bars(subs[1], trace, det, top)
    for sub, lvl in zip(subs[2:], levels):
        _draw_level(sub, rgb, trace, det, lvl, top, roles)

    names = trace.get("class_names") or []
    cls = names[det["class"]] if det["class"] < len(names) else f"class {det['class']}"
    if title is None:
        name = os.path.join(*os.path.normpath(trace["file"]).split(os.sep)[-2:]) if trace.get("file") else "image"
        title = f"{name}: detection #{det['rank']} ({cls}), score {det['score']:.2f}"
        if det["global"] is not None:
            c = det["class"]
            title += (f" = μ s_L + (1 − μ) s_G = {det['mu']:.2f} × {det['local']['probs'][c]:.2f}"
                      f" + {1 - det['mu']:.2f} × {det['global']['probs'][c]:.2f}")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    if path is not None:
        fig.savefig(path, dpi=DPI)
    return fig
