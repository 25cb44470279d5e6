"""Tables 1 to 3 from finished benchmark runs (:mod:`.runner`).

Everything is recomputed from the runs' ``nt_detections.json`` files:

- per run: the LROC threshold is chosen on the run's validation split (sets with
  negatives), then the test metrics are computed with it;
- per method: mean and std over the finished folds (the paper's layout), and
  the test images of all its folds pooled (each image is tested once in the
  cross-validation) for 95% bootstrap intervals;
- paired differences: Proposed (or the first voting_det row) minus every other
  row, by paired bootstrap over the images both have been tested on.

Runs evaluated with different test settings are refused
(:func:`voting_det.evaluation.check_same_settings`).
"""
import csv
import json
import os
import time
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np

from voting_det.evaluation import check_same_settings, load_records
from voting_det.evaluation import metrics as M

__all__ = ["tabulate", "collect"]

COLUMNS = [
    ("paper_auc", "AUC"), ("paper_spe", "SPE"), ("paper_sen", "SEN"), ("AP50", "AP50"), ("AP", "AP"),
    ("top1_acc", "top-1 acc"), ("mean_iou", "mean IoU"), ("froc_mean", "FROC mean"),
    ("lroc_auc", "LROC AUC"), ("lroc_sen", "LROC SEN"), ("lroc_spe", "LROC SPE"),
]
PAIRED_KEYS = ("paper_auc", "paper_sen", "paper_spe", "top1_acc", "mean_iou", "lroc_auc")


def _eval_results(run, split: str) -> dict:
    path = os.path.join(run.folder, "eval", "eval_results.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        results = json.load(f)
    name = run.split(split)
    return results.get(name, results if "bbox" in results else {})


def collect(runs) -> Dict[str, dict]:
    """method -> {"runs": [...], "folds": {fold: {...}}} for the finished runs."""
    out: Dict[str, dict] = OrderedDict()
    for run in runs:
        if not run.finished():
            continue
        with open(run.done_file) as f:
            info = json.load(f)
        ds_test, settings, test_records = load_records(os.path.join(run.eval_dir("test"), "nt_detections.json"))
        test_stats = M.analyse(test_records, iou=settings["match_iou"], top_n=settings["paper_top_n"])
        threshold, val_settings = None, None
        if run.split("val"):  # an outside split may have no validation set: no LROC threshold then
            _, val_settings, val_records = load_records(os.path.join(run.eval_dir("val"), "nt_detections.json"))
            val_stats = M.analyse(val_records, iou=settings["match_iou"], top_n=settings["paper_top_n"])
            threshold = M.choose_threshold(val_stats) if (~val_stats.positive).any() else None
        metrics = M.summarise(test_stats, threshold=threshold)
        bbox = _eval_results(run, "test").get("bbox", {})
        metrics["AP"], metrics["AP50"] = bbox.get("AP", float("nan")), bbox.get("AP50", float("nan"))
        entry = out.setdefault(run.method.name, {"method": run.method, "folds": OrderedDict()})
        entry["folds"][run.fold] = {"metrics": metrics, "settings": settings, "val_settings": val_settings,
                                    "records": test_records, "threshold": threshold, "info": info,
                                    "stats": test_stats}
    return out


def _label(fold) -> str:
    """``fold<k>`` for a fold, an outside split's own label otherwise."""
    return fold if isinstance(fold, str) else f"fold{fold}"


def _fmt(v, digits=1):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _digits(key):
    return 3 if key == "mean_iou" else 1


def _pooled(entry, folds=None):
    folds = sorted(entry["folds"]) if folds is None else folds
    records = [r for f in folds for r in entry["folds"][f]["records"]]
    return records, folds


def caliper_flags(dataset: str, cache_dir: str) -> Dict[str, bool]:
    """Absolute image path -> caliper flag (:mod:`.calipers`) for the images of
    registered set ``<dataset>_all``, cached in ``cache_dir``. Without the
    converted set on this machine, the cache alone (e.g. the one committed
    beside the archived runs); neither: no flags."""
    from detectron2.data import MetadataCatalog

    from voting_det.data.datasets import _image_root_of

    from .calipers import flag_dataset

    json_file = MetadataCatalog.get(f"{dataset}_all").get("json_file", None)
    cache = os.path.join(cache_dir, f"calipers_{dataset}.json")
    have_set = bool(json_file) and os.path.isfile(json_file)
    if os.path.isfile(cache) and (not have_set or os.path.getmtime(cache) >= os.path.getmtime(json_file)):
        with open(cache) as f:
            return json.load(f)
    if not have_set:
        return {}
    with open(json_file) as f:
        root = _image_root_of(json_file, json.load(f).get("info") or {})
    flags = {os.path.normpath(os.path.join(root, k)): bool(v) for k, v in flag_dataset(json_file, root).items()}
    os.makedirs(cache_dir, exist_ok=True)
    with open(cache, "w") as f:
        json.dump(flags, f)
    return flags


# Outcome of an image's top-1 box (docs/method.md section 5), for the failure analysis.
OUTCOMES = (
    ("correct", "correct (IoU > 0.5)"),
    ("loose", "right place, box size or shift off (0.3 < IoU <= 0.5)"),
    ("centre_inside", "centre inside the NT, IoU <= 0.3"),
    ("elsewhere", "elsewhere (centre outside the NT, IoU <= 0.3)"),
    ("none", "no detection"),
)


def top1_outcomes(stats) -> np.ndarray:
    """One of :data:`OUTCOMES`' keys per positive image (images with an NT)."""
    pos = stats.positive
    out = np.full(int(pos.sum()), "elsewhere", dtype=object)
    iou, inside, has = stats.top1_iou[pos], stats.top1_inside[pos], stats.has_det[pos]
    match = stats.top1_match[pos]
    out[inside & (iou <= stats.lenient_iou)] = "centre_inside"
    out[(iou > stats.lenient_iou) & ~match] = "loose"
    out[match] = "correct"
    out[~has] = "none"
    return out


def failure_lines(data) -> List[str]:
    """Where each row's top-1 box goes wrong (test images of the finished folds
    pooled): the outcome shares of :func:`top1_outcomes`, the median IoU of the
    correct ones (box tightness), and top-1 accuracy per third of NT height."""
    entries = [(e["method"].label or n, e) for n, e in data.items()]
    if not entries:
        return []
    heights_all = np.concatenate([d["stats"].gt_size[d["stats"].positive, 0] for d in entries[0][1]["folds"].values()])
    cuts = np.percentile(heights_all, [100 / 3, 200 / 3]) if len(heights_all) else np.array([np.nan, np.nan])
    lines = ["", "## Where the top-1 box fails (positive test images of the finished folds pooled; %)", "",
             f"NT height thirds (px, from the first row's images): < {cuts[0]:.0f}, {cuts[0]:.0f}-{cuts[1]:.0f}, > {cuts[1]:.0f}.", "",
             "| method | images | " + " | ".join(label for _, label in OUTCOMES)
             + " | median IoU of the correct | top-1 acc, small / middle / large NT"
             + " | top-1 height / true height, small / middle / large NT (median) | top-1 width / true width, same |",
             "|---|---|" + "---|" * (len(OUTCOMES) + 4)]
    for label, e in entries:
        outcomes = np.concatenate([top1_outcomes(d["stats"]) for d in e["folds"].values()])
        ious = np.concatenate([d["stats"].top1_iou[d["stats"].positive] for d in e["folds"].values()])
        heights = np.concatenate([d["stats"].gt_size[d["stats"].positive, 0] for d in e["folds"].values()])
        n = len(outcomes)
        shares = [_fmt(100.0 * np.mean(outcomes == key)) if n else "n/a" for key, _ in OUTCOMES]
        correct = outcomes == "correct"
        third = np.digitize(heights, cuts)
        by_size = " / ".join(_fmt(100.0 * correct[third == t].mean()) if (third == t).any() else "n/a" for t in range(3))
        tight = f"{np.median(ious[correct]):.3f}" if correct.any() else "n/a"
        ratios = np.concatenate([d["stats"].top1_size_ratio[d["stats"].positive] for d in e["folds"].values()])
        size_cells = [" / ".join(f"{np.nanmedian(ratios[third == t, axis]):.2f}" if np.isfinite(ratios[third == t, axis]).any()
                                 else "n/a" for t in range(3)) for axis in (0, 1)]
        lines.append(f"| {label} | {n} | " + " | ".join(shares) + f" | {tight} | {by_size} | "
                     + " | ".join(size_cells) + " |")
    return lines


def cost_lines(names_labels, profile, speed_json: Optional[str]) -> List[str]:
    """docs/method.md section 6, "each row states its parameters and FLOPs": a section from
    ``tools/benchmark_speed.py``'s JSON at the profile's test size (the first
    size whose height is ``INPUT.MIN_SIZE_TEST``); empty without the file or
    that size."""
    if not speed_json or not os.path.exists(speed_json):
        return []
    opts = dict(zip(profile.opts[::2], profile.opts[1::2]))
    with open(speed_json) as f:
        speed = json.load(f)
    sizes = [k for k in speed.get("inference", {}) if k.split("x")[0] == opts.get("INPUT.MIN_SIZE_TEST")]
    if not sizes:
        return []
    size = sizes[0]
    inference, flops = speed["inference"][size], speed.get("flops", {}).get(size, {})
    machine = speed.get("machine", {})
    lines = ["", f"## Size and cost per row (`{os.path.relpath(speed_json)}`, commit {speed.get('commit', '')[:10]}: "
             f"{size} images, the same test settings, batch 1, {machine.get('device', '')} "
             f"{machine.get('gpu', machine.get('cpu', ''))}, {machine.get('threads', '')} threads)", "",
             "| method | parameters | GFLOPs / image (fvcore) | ms / image | ratio to FPN R50 |", "|---|---|---|---|---|"]
    for name, label in names_labels:
        r = inference.get(name)
        if r is None:
            continue
        g = flops.get(name, {}).get("gflops")
        ratio = r.get("ratio_to_fpn_R50")
        lines.append(f"| {label} | {r['parameters'] / 1e6:.1f} M | {_fmt(g)} | {r['time']['median_ms']:.0f} | "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}'} |")
    return lines


def _short_commit(commit: str) -> str:
    """``git_commit``'s record shortened, its marks kept: "0c4e571", "0c4e571-dirty", "0c4e571 (copy)"."""
    marks = "".join(m for m in ("-dirty", " (copy)") if m in commit)
    return commit.split(" ")[0].split("-")[0][:7] + marks


def tabulate(runs, out_dir: Optional[str] = None, command: str = "", num_bootstrap: int = 1000,
             calipers: bool = True, speed_json: Optional[str] = None) -> Optional[str]:
    """Print (and with ``out_dir`` write) the tables of the finished ``runs``:
    ``table.md``, ``table.csv``, ``roc.png``, ``manifest.json``; with
    ``speed_json`` also each row's parameters, FLOPs and time (:func:`cost_lines`)."""
    data = collect(runs)
    if not data:
        print("no finished runs to tabulate")
        return None
    settings = {f"{m}/{_label(f)}[{split}]": d[key]
                for m, e in data.items() for f, d in e["folds"].items()
                for split, key in (("test", "settings"), ("val", "val_settings")) if d[key] is not None}
    common = check_same_settings(settings)
    profile, dataset = runs[0].profile, runs[0].dataset
    if runs[0].sets:
        sets = dict(runs[0].sets)
        title = f"# Trained on `{sets['train']}`, tested on `{sets['test']}`, profile `{profile.name}`"
    else:
        title = f"# Cross-validation on `{dataset}`, profile `{profile.name}`"
    lines = [title, ""]
    lines += [f"Command: `{command}`", "", f"Profile `{profile.name}`: {profile.doc}", "",
              "Test settings (identical for every row): " + ", ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    # Table: mean ± std over folds
    header = ["method", "folds"] + [label for _, label in COLUMNS]
    rows_csv = []
    lines += ["## Mean ± std over folds (test splits; %, mean IoU in [0, 1])", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, e in data.items():
        folds = sorted(e["folds"])
        cells = [e["method"].label or name, ",".join(map(str, folds))]
        row = {"method": name, "folds": " ".join(map(str, folds))}
        for key, label in COLUMNS:
            vals = np.array([e["folds"][f]["metrics"].get(key, np.nan) for f in folds], dtype=float)
            if not np.isfinite(vals).any():
                cells.append("n/a")
                continue
            mean = float(np.nanmean(vals))
            std = float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else float("nan")
            cells.append(_fmt(mean, _digits(key)) + ("" if not np.isfinite(std) else f" ± {_fmt(std, _digits(key))}"))
            row[key + "_mean"], row[key + "_std"] = mean, std
        lines.append("| " + " | ".join(cells) + " |")
        rows_csv.append(row)
    # Pooled bootstrap intervals
    lines += ["", f"## Test images of the finished folds pooled: point estimate [95% bootstrap interval, {num_bootstrap} resamples over images]", ""]
    keys = [k for k in ("paper_auc", "paper_spe", "paper_sen", "top1_acc", "mean_iou", "lroc_auc") ]
    lines += ["| method | images | " + " | ".join(dict(COLUMNS)[k] for k in keys) + " |", "|" + "---|" * (len(keys) + 2)]
    pooled_stats = {}
    for name, e in data.items():
        records, folds = _pooled(e)
        stats = M.analyse(records, iou=common["match_iou"], top_n=common["paper_top_n"])
        pooled_stats[name] = (stats, folds, records)
        point = M.summarise(stats)
        ci = M.bootstrap(stats, num=num_bootstrap)
        cells = []
        for k in keys:
            if k not in point or not np.isfinite(point[k]):
                cells.append("n/a")
            else:
                lo, hi = ci.get(k, (np.nan, np.nan))
                d = _digits(k)
                cells.append(f"{_fmt(point[k], d)} [{_fmt(lo, d)}, {_fmt(hi, d)}]")
        lines.append(f"| {e['method'].label or name} | {len(records)} | " + " | ".join(cells) + " |")
    # With and without caliper-marked images (docs/method.md section 5)
    flags = caliper_flags(dataset, os.path.join(runs[0].root, profile.name, dataset)) if calipers else {}
    if flags:
        lines += ["", "## With and without the sonographer's calipers (test images pooled; caliper flag of "
                      "`benchmarks.calipers`, checked against hand labels in benchmarks/results/caliper_detector.md)", "",
                  "| method | subset | images | top-1 acc | AUC | SEN | SPE |", "|---|---|---|---|---|---|---|"]
        for name, (stats, folds, records) in pooled_stats.items():
            marks = np.array([flags.get(os.path.normpath(r["file_name"])) for r in records], dtype=object)
            for label, pick in (("with calipers", marks == True), ("without calipers", marks == False)):  # noqa: E712
                idx = np.flatnonzero(pick)
                if len(idx) == 0:
                    lines.append(f"| {data[name]['method'].label or name} | {label} | 0 | n/a | n/a | n/a | n/a |")
                    continue
                m = M.summarise(stats, idx)
                lines.append(f"| {data[name]['method'].label or name} | {label} | {len(idx)} | {_fmt(m['top1_acc'])} | "
                             f"{_fmt(m['paper_auc'])} | {_fmt(m['paper_sen'])} | {_fmt(m['paper_spe'])} |")
        n_without = sum(1 for v in flags.values() if not v)
        lines += ["", f"{n_without} of the set's {len(flags)} images are not flagged: with so few, the "
                      "without-calipers numbers are wide; see the intervals above for the scale of the noise."]
    # Paired differences against the reference voting_det row
    ref = next((m for m in ("proposed", "lcf", "ls") if m in data), None)
    if ref is not None and len(data) > 1:
        lines += ["", f"## Paired differences: {data[ref]['method'].label or ref} minus each row "
                      "(same test images; [95% interval]; P = share of resamples where the difference is <= 0)", ""]
        lines += ["| row | images | " + " | ".join(dict(COLUMNS)[k] for k in PAIRED_KEYS) + " |",
                  "|" + "---|" * (len(PAIRED_KEYS) + 2)]
        ref_stats = {}  # the reference's pooled records and stats, once per set of folds
        for name, e in data.items():
            if name == ref:
                continue
            folds = tuple(sorted(set(e["folds"]) & set(data[ref]["folds"])))
            if not folds:
                continue
            if folds not in ref_stats:
                a_rec, _ = _pooled(data[ref], folds)
                ref_stats[folds] = a_rec, M.analyse(a_rec, iou=common["match_iou"], top_n=common["paper_top_n"])
            a_rec, sa = ref_stats[folds]
            b_rec, _ = _pooled(e, folds)
            try:
                b_rec = M.align_records(a_rec, b_rec)
            except ValueError:
                lines.append(f"| {name} | - | test images differ: not paired |")
                continue
            sb = M.analyse(b_rec, iou=common["match_iou"], top_n=common["paper_top_n"])
            diff = M.paired_bootstrap(sa, sb, num=num_bootstrap)
            cells = []
            for k in PAIRED_KEYS:
                if k not in diff:
                    cells.append("n/a")
                    continue
                d = _digits(k)
                x = diff[k]
                cells.append(f"{x['diff']:+.{d}f} [{x['low']:+.{d}f}, {x['high']:+.{d}f}] P={x['p_le_0']:.2f}")
            lines.append(f"| {e['method'].label or name} | {len(a_rec)} | " + " | ".join(cells) + " |")
    lines += failure_lines(data)
    lines += cost_lines([(n, e["method"].label or n) for n, e in data.items()], profile, speed_json)
    # Manifest
    manifest = {
        "command": command, "profile": profile.name, "profile_opts": list(profile.opts), "dataset": dataset,
        "written_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": [dict(d["info"], lroc_threshold_from_val=d["threshold"]) for e in data.values() for d in e["folds"].values()],
    }
    total = sum(r["wall_seconds"] for r in manifest["runs"])
    manifest["total_wall_seconds"] = round(total, 1)
    lines += ["", f"Total wall time of these runs: {total / 3600:.2f} h. Per run (min): "
              + ", ".join(f"{r['method']}/{_label(r['fold'])} {r['wall_seconds'] / 60:.0f}" for r in manifest["runs"])
              + ". Machine: " + "; ".join(dict.fromkeys(r["machine"] for r in manifest["runs"])) + ". Commits: "
              + ", ".join(sorted({_short_commit(r["commit"]) for r in manifest["runs"]})) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "table.md"), "w") as f:
            f.write(text)
        with open(os.path.join(out_dir, "table.csv"), "w", newline="") as f:
            fields = sorted({k for r in rows_csv for k in r}, key=lambda k: (k not in ("method", "folds"), k))
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows_csv)
        with open(os.path.join(out_dir, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        _plot(pooled_stats, data, os.path.join(out_dir, "roc.png"), dataset)
    return text


def _plot(pooled_stats, data, path, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_neg = any((~s.positive).any() for s, _, _ in pooled_stats.values())
    ncols = 3 if has_neg else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.6))
    for name, (s, folds, _) in pooled_stats.items():
        label = f"{data[name]['method'].label or name} (folds {','.join(map(str, folds))})"
        x, y = M.paper_roc_curve(s)
        axes[0].plot(x, y, label=label)
        fppi, sens = M.froc_curve(s)
        axes[1].plot(fppi, sens, label=label)
        if has_neg:
            lx, ly, _ = M.lroc_curve(s)
            axes[2].plot(lx, ly, label=label)
    axes[0].set(title="Paper-style ROC (top-10 pool)", xlabel="false-positive rate (%)", ylabel="true-positive rate (%)")
    axes[1].set(title="FROC", xlabel="false positives per image", ylabel="sensitivity (%)", xscale="log", xlim=(0.1, 10))
    if has_neg:
        axes[2].set(title="LROC (top-1 per image)", xlabel="negatives with a detection (%)", ylabel="positives found (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{dataset}: test images of the finished folds pooled")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
