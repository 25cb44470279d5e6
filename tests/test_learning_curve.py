"""tools/learning_curve.py (benchmarks.learning_curve): checkpoints in training order, the logged training
loss at each, and every checkpoint's evaluation equal to the trainer's own."""
import csv
import json
import os
import subprocess
import sys

import pytest

from benchmarks import learning_curve

from .test_reliability import ROOT, TINY_OPTS, _finish, _train_net


def test_checkpoints_in_training_order_and_final_at_max_iter(tmp_path):
    for name in ("model_0000199.pth", "model_final.pth", "model_0000099.pth", "model_0000599.pth",
                 "other.pth", "model_0000099.pth.tmp", "last_checkpoint"):
        (tmp_path / name).write_bytes(b"")
    found = learning_curve.checkpoints(str(tmp_path), max_iter=600)
    # model_0000099 is the state after 100 iterations; final and the periodic one at 600 are the same state
    assert [(it, os.path.basename(p)) for it, p in found] == [
        (100, "model_0000099.pth"), (200, "model_0000199.pth"), (600, "model_final.pth")]


def test_training_loss_is_the_logged_one_at_or_before_the_checkpoint(tmp_path):
    records = [
        {"iteration": 19, "total_loss": 3.0}, {"iteration": 39, "total_loss": 2.0},
        {"iteration": 39, "nt/top1_acc": 50.0},  # an evaluation record, no loss
        {"iteration": 59, "total_loss": 1.8},
        {"iteration": 39, "total_loss": 2.5},  # a resumed run logs iteration 39 again: the later record wins
        {"iteration": 59, "total_loss": 1.5},
    ]
    path = tmp_path / "metrics.json"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert learning_curve.train_loss_at(str(path), 40) == 2.5
    assert learning_curve.train_loss_at(str(path), 50) == 2.5
    assert learning_curve.train_loss_at(str(path), 60) == 1.5
    assert learning_curve.train_loss_at(str(path), 10) is None
    assert learning_curve.train_loss_at(str(tmp_path / "missing.json"), 60) is None


@pytest.mark.slow
def test_each_checkpoint_evaluated_on_the_fold_split_as_the_trainer_does(tiny_datasets_root, tmp_path):
    """LS trained 4 iterations with a checkpoint every 2 and its end-of-training
    evaluation on fold 0's validation split: the tool finds the fold's val set
    from DATASETS.TRAIN, evaluates both checkpoints, and its final row equals
    the trainer's own evaluation; a rerun uses the cached evaluations."""
    train = tmp_path / "train"
    opts = [o if o != "()" else "('nt_fold0_val',)" for o in TINY_OPTS]
    _finish(_train_net(["--config-file", os.path.join(ROOT, "configs/nt_ls.yaml")] + opts
                       + ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(train)],
                       tiny_datasets_root))
    trainer_eval = json.load(open(train / "inference" / "nt_fold0_val" / "nt_metrics.json"))["metrics"]
    out = tmp_path / "curve"
    env = dict(os.environ, DETECTRON2_DATASETS=str(tiny_datasets_root), PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(ROOT, "tools/learning_curve.py"), "--out", str(out), f"LS tiny={train}"]
    _finish(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    rows = list(csv.DictReader(open(out / "learning_curve.csv")))
    assert [(r["iteration"], r["checkpoint"], r["dataset"]) for r in rows] == [
        ("2", "model_0000001.pth", "nt_fold0_val"), ("4", "model_final.pth", "nt_fold0_val")]
    assert float(rows[-1]["top1_acc"]) == pytest.approx(trainer_eval["top1_acc"])
    assert float(rows[-1]["mean_iou"]) == pytest.approx(trainer_eval["mean_iou"])
    assert float(rows[-1]["paper_auc"]) == pytest.approx(trainer_eval["paper_auc"])
    assert int(rows[-1]["num_images"]) == trainer_eval["num_images"]
    assert (out / "learning_curve.png").stat().st_size > 0 and "| LS tiny |" in (out / "learning_curve.md").read_text()

    cached = out / "evals" / "LS_tiny" / "nt_fold0_val" / "model_final" / "nt_metrics.json"
    mtime = cached.stat().st_mtime_ns
    _finish(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    assert cached.stat().st_mtime_ns == mtime
    assert list(csv.DictReader(open(out / "learning_curve.csv"))) == rows

    # another split into the same folder is evaluated, not read from the validation split's cache
    _finish(subprocess.Popen(cmd[:2] + ["--split", "test"] + cmd[2:], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True))
    tested = list(csv.DictReader(open(out / "learning_curve.csv")))
    assert [r["dataset"] for r in tested] == ["nt_fold0_test"] * 2
    test_metrics = json.load(open(out / "evals" / "LS_tiny" / "nt_fold0_test" / "model_final" / "nt_metrics.json"))
    assert test_metrics["dataset"] == "nt_fold0_test"
    assert int(tested[-1]["num_images"]) == test_metrics["metrics"]["num_images"]


def test_a_run_not_trained_on_a_fold_needs_dataset(tmp_path):
    from types import SimpleNamespace

    cfg = SimpleNamespace(DATASETS=SimpleNamespace(TRAIN=("my_scans",)))
    with pytest.raises(SystemExit, match="--dataset"):
        learning_curve.dataset_for(cfg, "val")
    assert learning_curve.dataset_for(cfg, "val", "my_scans_val") == "my_scans_val"
    cfg.DATASETS.TRAIN = ("nt_real_fold2_train",)
    assert learning_curve.dataset_for(cfg, "val") == "nt_real_fold2_val"
