"""The faithfulness measurement's report: the headline table as Markdown
(:func:`format_summary`) and the deletion curves with the stability overlaps
as one figure (:func:`plot_faithfulness`), both from the result of
:func:`voting_det.interpretation.faithfulness.run_faithfulness`."""
from typing import Dict, Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .deletion import BORDER_RANKING, CONTROL, HEADLINE_METRIC, RANDOM, RANKINGS

__all__ = ["format_summary", "plot_faithfulness"]


def format_summary(result: Dict) -> str:
    """The headline numbers as Markdown: one row per ranking, its area vs random
    (95% interval) for each metric; mu; the most faithful ranking; stability."""
    deletion = result["deletion"]
    metrics = result["metrics"]
    lines = [f"Deletion test on {deletion['num_images']} images, m = {deletion['sizes']}, "
             f"{result['settings']['random_draws']} random draws; mu = "
             + ("none (no context branch)" if deletion["mu"] is None else f"{deletion['mu']:.3f}"),
             "",
             "Area between each ranking's curve and the random curve (mean over log2 m; > 0 = deleting its top "
             "primitives moves the prediction more than deleting random ones), mean over images [95% bootstrap "
             "interval]:", "",
             "| ranking | " + " | ".join(metrics) + " |",
             "|---|" + "---|" * len(metrics)]
    for name, areas in deletion["area_vs_random"].items():
        cells = [f"{a['mean']:+.3f} " + (f"[{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}]" if a["ci95"][0] is not None
                                        else "[no interval: 1 image]")
                 for a in (areas[m] for m in metrics)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Most faithful ranking ({HEADLINE_METRIC}): **{deletion['most_faithful'][HEADLINE_METRIC]}**"
              + "; by metric: " + ", ".join(f"{m}: {r}" for m, r in deletion["most_faithful"].items())]
    lines += [""] + [f"- {note}" for note in result["notes"]]
    stab = result["stability"]["summary"]
    for kind, s in stab.items():
        lines.append(f"- stability, {kind}: {s['matched']} of {s['comparisons']} comparisons kept the same top "
                     f"detection; top-{result['settings']['stability_top']} overlap "
                     + "; ".join(f"{lvl}: " + ", ".join(f"{n} {v:.2f}" for n, v in ov.items())
                                 + f" (chance {s['chance'][lvl]:.2f})" for lvl, ov in s["mean_overlap"].items()))
    return "\n".join(lines)


def plot_faithfulness(result: Dict, path: str, title: Optional[str] = None) -> Figure:
    """Deletion curves (one panel per metric, x = m on a log2 axis; random with
    the spread of its draws) and the stability overlaps, as one PNG."""
    deletion = result["deletion"]
    metrics = result["metrics"]
    sizes = deletion["sizes"]
    curves = deletion["curves"]
    columns = (len(metrics) + 2) // 2  # the metrics' panels and the stability panel, two rows
    fig = Figure(figsize=(5 * columns, 9.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, columns).ravel()
    styles = {"alpha": ("tab:blue", "-", "o"), "contribution": ("tab:red", "-", "s"),
              "response_mass": ("tab:green", "-", "^"), "contrastive": ("tab:purple", "-", "D"),
              BORDER_RANKING: ("tab:orange", "-", "P"),
              CONTROL: ("grey", "--", "v"), RANDOM: ("black", ":", None)}
    extra_colours = iter(["tab:brown", "tab:olive", "tab:cyan"])
    for name in curves:
        if name not in styles:
            styles[name] = (next(extra_colours, "tab:pink"), "-", "d")
    labels = {RANDOM: "random primitives (mean of draws; band: 10-90% of the draws' means)",
              CONTROL: "lowest by alpha (control)"}
    per_image = result["per_image"]
    for ax, metric in zip(axes, metrics):
        for name, values in curves.items():
            colour, ls, marker = styles[name]
            ax.plot(sizes, values[metric], color=colour, linestyle=ls, marker=marker, markersize=4,
                    label=labels.get(name, f"top by {name}"))
        draws = np.array([img["random_draws"][metric] for img in per_image])  # (images, draws, m)
        if draws.size:
            draw_means = draws.mean(axis=0)
            ax.fill_between(sizes, np.percentile(draw_means, 10, axis=0), np.percentile(draw_means, 90, axis=0),
                            color="black", alpha=0.12, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(m) for m in sizes], fontsize=8)
        ax.set_xlabel("m primitives deleted per level", fontsize=9)
        ax.set_title(metrics[metric], fontsize=10)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    for unused in axes[len(metrics) + 1:]:
        unused.set_visible(False)
    ax = axes[len(metrics)]
    stab = result["stability"]["summary"]
    groups = [(kind, lvl) for kind, s in stab.items() for lvl in s["mean_overlap"]]
    rankings = list(RANKINGS) + sorted({n for kind, lvl in groups for n in stab[kind]["mean_overlap"][lvl]}
                                       - set(RANKINGS))
    width = 0.8 / len(rankings)
    for j, name in enumerate(rankings):
        values = [stab[kind]["mean_overlap"][lvl][name] for kind, lvl in groups]
        ax.bar(np.arange(len(groups)) + (j - (len(rankings) - 1) / 2) * width, values, width=width,
               color=styles[name][0], label=f"top by {name}")
    for g, (kind, lvl) in enumerate(groups):
        ax.plot([g - 0.45, g + 0.45], [stab[kind]["chance"][lvl]] * 2, color="black", linewidth=1.5,
                label="chance S / K" if g == 0 else None)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([f"{kind}\n{lvl}" for kind, lvl in groups], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("mean overlap |A and B| / S", fontsize=9)
    if groups:
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    matched = ", ".join(f"{kind} {s['matched']}/{s['comparisons']}" for kind, s in stab.items())
    matched = f"comparisons that kept the top detection: {matched}" if matched else "no comparison"
    ax.set_title(f"stability: overlap of the top-{result['settings']['stability_top']} primitives "
                 f"(shift {result['settings']['shift_px']} px)\n{matched}", fontsize=9)
    mu = deletion["mu"]
    fig.suptitle(title or (f"Deletion test on {deletion['num_images']} images; mu = "
                           + ("n/a (no context branch)" if mu is None else f"{mu:.2f}")
                           + f"; most faithful ranking: {deletion['most_faithful'][HEADLINE_METRIC]}"), fontsize=12)
    fig.savefig(path)
    return fig
