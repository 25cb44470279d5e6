"""Learning curves of finished (or interrupted) training runs
(``tools/learning_curve.py``): every periodic checkpoint a run kept, evaluated
on one split of its fold, beside the training loss at that iteration.

Each checkpoint's evaluation is kept under ``OUT/evals/LABEL/SET/CHECKPOINT/``
(NTEvaluator's files), so a rerun evaluates only what is missing;
``OUT/learning_curve.md``, ``.csv`` and ``.png`` are rewritten from them.
Checkpoints are never modified.
"""
import csv
import json
import os
import re

__all__ = ["checkpoints", "curve_rows", "dataset_for", "evaluate", "load_config", "train_loss_at", "write_outputs"]

CHECKPOINT = re.compile(r"^model_(\d{7}|final)\.pth$")


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
    """The run's saved ``config.yaml`` (:func:`voting_det.config.setup_cfg`),
    with ``MODEL.DEVICE`` = ``device`` when given."""
    from voting_det.config import setup_cfg

    path = os.path.join(train_dir, "config.yaml")
    if not os.path.isfile(path):
        raise SystemExit(f"{train_dir}: no config.yaml; give a detectron2 output folder of a training run")
    return setup_cfg(path, ["MODEL.DEVICE", device] if device else [])


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


def curve_rows(runs, out: str, split: str = "val", dataset_override=None, device=None) -> list:
    """One row per checkpoint of every ``LABEL=TRAIN_DIR`` in ``runs``: its
    evaluation on ``split`` of the run's fold (or on ``dataset_override``),
    cached below ``out/evals``, and the training loss at its iteration."""
    rows = []
    for spec in runs:
        label, sep, train_dir = spec.rpartition("=")
        if not sep or not label:
            raise SystemExit(f"{spec!r}: expected LABEL=TRAIN_DIR")
        cfg = load_config(train_dir, device)
        dataset = dataset_for(cfg, split, dataset_override)
        found = checkpoints(train_dir, cfg.SOLVER.MAX_ITER)
        if not found:
            raise SystemExit(f"{train_dir}: no model_*.pth checkpoints")
        for it, weights in found:
            out_dir = os.path.join(out, "evals", _slug(label), dataset, os.path.basename(weights)[: -len(".pth")])
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
    return rows


def write_outputs(out: str, split: str, dataset_override, runs, rows) -> None:
    """``out/learning_curve.csv``, ``.md`` (with the command that remakes it) and ``.png`` of :func:`curve_rows`' rows."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "learning_curve.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "dataset", "iteration", "checkpoint", "train_loss", "top1_acc", "top1_ci_low",
                    "top1_ci_high", "mean_iou", "paper_auc", "num_images"])
        for r in rows:
            lo, hi = (r["top1_ci"] or (None, None))
            w.writerow([r["label"], r["dataset"], r["iteration"], r["checkpoint"], r["train_loss"], r["top1_acc"],
                        lo, hi, r["mean_iou"], r["paper_auc"], r["num_images"]])
    command = "python tools/learning_curve.py " + " ".join(
        [f"--split {split}", f"--out {out}"] + (["--dataset " + dataset_override] if dataset_override else [])
        + [f'"{s}"' for s in runs])
    lines = [f"# Learning curves ({split} split)", "", f"Command: `{command}`", "",
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
    with open(os.path.join(out, "learning_curve.md"), "w") as f:
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
    for ax, title in zip(axes, (f"top-1 accuracy, {split} (%)", f"mean top-1 IoU, {split}",
                                "training loss (logged)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "learning_curve.png"), dpi=90)
    plt.close(fig)
