#!/usr/bin/env python
"""Learning curves of finished (or interrupted) training runs: every periodic
checkpoint a run kept, evaluated on one split of its fold (the validation split
by default, so that the test split is not looked at), beside the training loss
at that iteration. It answers "was this row still improving when its schedule
ended?" for rows trained with the same schedule.

    python tools/learning_curve.py --split val --out benchmarks/results/diagnostics/learning_curves_fold2 \\
        "LCF=output/benchmark/cpu/nt_real/lcf/fold2/train" \\
        "FPN R18=output/benchmark/cpu/nt_real/fpn_R18/fold2/train"

Each argument is LABEL=TRAIN_DIR, a detectron2 output folder holding the run's
``config.yaml``, its ``metrics.json`` and ``model_*.pth`` checkpoints (for
Proposed, give its ``stage1_lcf`` and ``stage2_voting`` folders as two rows).
The split's set is the config's ``DATASETS.TRAIN[0]`` with ``_train`` replaced
by ``_<split>`` (``--dataset`` overrides it). Each checkpoint's evaluation is
kept under ``OUT/evals/LABEL/SET/CHECKPOINT/`` (NTEvaluator's files), so a rerun evaluates only
what is missing; ``OUT/learning_curve.md``, ``.csv`` and ``.png`` are
rewritten from them. Checkpoints are never modified.
"""
import argparse
import csv
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHECKPOINT = re.compile(r"^model_(\d{7}|final)\.pth$")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=TRAIN_DIR")
    p.add_argument("--out", required=True, help="folder for the tables, the plot and the cached evaluations")
    p.add_argument("--split", default="val", help="which split of the run's fold (default: val)")
    p.add_argument("--dataset", help="evaluate on this registered set instead of the fold's split")
    p.add_argument("--device", help="MODEL.DEVICE for the evaluation (default: the run's)")
    return p.parse_args(argv)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def checkpoints(train_dir: str, max_iter: int):
    """(iteration, path) of every checkpoint in ``train_dir``, in training order;
    ``model_0000099.pth`` is the state after iteration 100, ``model_final.pth``
    after ``max_iter``."""
    out = {}
    for name in os.listdir(train_dir):
        m = CHECKPOINT.match(name)
        if m and m.group(1) == "final":  # the same state as a periodic one saved at max_iter: keep final's name
            out[max_iter] = os.path.join(train_dir, name)
        elif m:
            out.setdefault(int(m.group(1)) + 1, os.path.join(train_dir, name))
    return sorted(out.items())


def train_loss_at(metrics_file: str, iteration: int):
    """The training loss detectron2 logged at ``iteration`` (its metrics.json,
    one JSON record a line, written every 20 iterations with ``total_loss`` the
    median over those 20): the last record at or before the checkpoint's
    iteration; a resumed run may repeat iterations, the later record wins."""
    if not os.path.isfile(metrics_file):
        return None
    by_iter = {}
    with open(metrics_file) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if "total_loss" in rec and "iteration" in rec:
                by_iter[int(rec["iteration"]) + 1] = float(rec["total_loss"])
    before = [it for it in by_iter if it <= iteration]
    return by_iter[max(before)] if before else None


def load_config(train_dir: str, device=None):
    from detectron2.config import get_cfg

    from voting_det.config import add_voting_config, resolve_device

    path = os.path.join(train_dir, "config.yaml")
    if not os.path.isfile(path):
        raise SystemExit(f"{train_dir}: no config.yaml; give a detectron2 output folder of a training run")
    cfg = get_cfg()
    add_voting_config(cfg)
    cfg.set_new_allowed(True)
    cfg.merge_from_file(path)
    if device:
        cfg.MODEL.DEVICE = device
    resolve_device(cfg)
    return cfg


def dataset_for(cfg, split: str, override=None) -> str:
    if override:
        return override
    train = cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else ""
    if not train.endswith("_train"):
        raise SystemExit(f"the run trained on {train!r}, not a fold's '_train' split: give --dataset")
    return train[: -len("_train")] + "_" + split


def evaluate(cfg, weights: str, dataset: str, out_dir: str) -> dict:
    """NTEvaluator's metrics of ``weights`` on ``dataset``, cached in ``out_dir``."""
    cached = os.path.join(out_dir, "nt_metrics.json")
    if os.path.isfile(cached):
        with open(cached) as f:
            return json.load(f)
    from detectron2.evaluation import inference_on_dataset

    from voting_det.engine import Trainer
    from voting_det.engine.checkpoint import SafeCheckpointer
    from voting_det.engine.trainer import build_nt_metrics_evaluator

    model = Trainer.build_model(cfg)
    SafeCheckpointer(model).load(weights)  # refuses weights of another shape instead of skipping them
    model.eval()
    evaluator = build_nt_metrics_evaluator(cfg, dataset, out_dir, distributed=False)
    inference_on_dataset(model, Trainer.build_test_loader(cfg, dataset), evaluator)
    with open(cached) as f:
        return json.load(f)


def main(argv=None):
    args = parse_args(argv)
    import voting_det  # noqa: F401  (registers the data sets)

    rows = []
    for spec in args.runs:
        label, sep, train_dir = spec.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"{spec!r}: expected LABEL=TRAIN_DIR")
        cfg = load_config(train_dir, args.device)
        dataset = dataset_for(cfg, args.split, args.dataset)
        found = checkpoints(train_dir, cfg.SOLVER.MAX_ITER)
        if not found:
            raise SystemExit(f"{train_dir}: no model_*.pth checkpoints")
        for it, weights in found:
            out_dir = os.path.join(args.out, "evals", _slug(label), dataset, os.path.basename(weights)[: -len(".pth")])
            res = evaluate(cfg, weights, dataset, out_dir)
            m, ci = res["metrics"], res.get("ci95", {})
            rows.append({
                "label": label, "dataset": dataset, "iteration": it, "checkpoint": os.path.basename(weights),
                "train_loss": train_loss_at(os.path.join(train_dir, "metrics.json"), it),
                "top1_acc": m["top1_acc"], "top1_ci": ci.get("top1_acc"), "mean_iou": m["mean_iou"],
                "paper_auc": m["paper_auc"], "num_images": int(m["num_images"]),
            })
            print(f"{label} {it}: top-1 {m['top1_acc']:.1f}, mean IoU {m['mean_iou']:.3f}, AUC {m['paper_auc']:.1f}",
                  flush=True)
    write_outputs(args, rows)


def write_outputs(args, rows):
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "learning_curve.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "dataset", "iteration", "checkpoint", "train_loss", "top1_acc", "top1_ci_low",
                    "top1_ci_high", "mean_iou", "paper_auc", "num_images"])
        for r in rows:
            lo, hi = (r["top1_ci"] or (None, None))
            w.writerow([r["label"], r["dataset"], r["iteration"], r["checkpoint"], r["train_loss"], r["top1_acc"],
                        lo, hi, r["mean_iou"], r["paper_auc"], r["num_images"]])
    command = "python tools/learning_curve.py " + " ".join(
        [f"--split {args.split}", f"--out {args.out}"] + (["--dataset " + args.dataset] if args.dataset else [])
        + [f'"{s}"' for s in args.runs])
    lines = [f"# Learning curves ({args.split} split)", "", f"Command: `{command}`", "",
             "Each checkpoint the run kept, evaluated on the split; training loss = the `total_loss` detectron2 logged "
             "at that iteration (metrics.json: the median of the 20 iterations before). Intervals: 95% bootstrap "
             "over images.", "",
             "| run | set | iteration | training loss | top-1 acc [95%] | mean IoU | AUC (paper-style) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f" [{r['top1_ci'][0]:.1f}, {r['top1_ci'][1]:.1f}]" if r["top1_ci"] else ""
        loss = f"{r['train_loss']:.3f}" if r["train_loss"] is not None else "n/a"
        lines.append(f"| {r['label']} | {r['dataset']} ({r['num_images']}) | {r['iteration']} | {loss} | "
                     f"{r['top1_acc']:.1f}{ci} | {r['mean_iou']:.3f} | {r['paper_auc']:.1f} |")
    with open(os.path.join(args.out, "learning_curve.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label in dict.fromkeys(r["label"] for r in rows):
        rs = [r for r in rows if r["label"] == label]
        its = [r["iteration"] for r in rs]
        axes[0].plot(its, [r["top1_acc"] for r in rs], marker="o", label=label)
        axes[1].plot(its, [r["mean_iou"] for r in rs], marker="o", label=label)
        axes[2].plot([r["iteration"] for r in rs if r["train_loss"] is not None],
                     [r["train_loss"] for r in rs if r["train_loss"] is not None], marker="o", label=label)
    for ax, title in zip(axes, (f"top-1 accuracy, {args.split} (%)", f"mean top-1 IoU, {args.split}",
                                "training loss (logged)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "learning_curve.png"), dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
