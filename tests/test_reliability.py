"""Never lose a run: exact resume after SIGKILL, atomic checkpoints, a clear
stop at a non-finite loss, run folders guarded, and multi-process (gloo)
training and evaluation equal to one process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.env import seed_all_rng

from voting_det import add_voting_config
from voting_det.config import merge_config_file
from voting_det.data.sampler import PositionDataset, PositionSampler
from voting_det.engine import Trainer
from voting_det.engine.run_folder import config_differences, refuse_other_run
from voting_det.engine.checkpoint import SafeCheckpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_OPTS = [
    "DATASETS.TRAIN", "('nt_fold0_train',)", "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(144,)", "INPUT.MIN_SIZE_TEST", "144", "MODEL.DEVICE", "cpu",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "SOLVER.WARMUP_ITERS", "0", "TEST.EVAL_PERIOD", "0",
    "DATALOADER.NUM_WORKERS", "0", "TEST.NT_EVAL.NUM_BOOTSTRAP", "0",
]


def _train_net(args, datasets_root, **kw):
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root), PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "tools/train_net.py")] + args, env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_config_differences_ignore_new_keys_and_name_changed_ones(tmp_path):
    saved = "MODEL:\n  A: 1\n  B: [1, 2]\nSOLVER:\n  LR: 0.1\nOUTPUT_DIR: x\n"
    now = "MODEL:\n  A: 1\n  B: [1, 2]\n  NEW: 3\nSOLVER:\n  LR: 0.2\nOUTPUT_DIR: y\n"
    assert config_differences(saved, now) == ["SOLVER.LR: 0.1 saved, 0.2 now"]
    assert config_differences(saved.replace("SOLVER:\n  LR: 0.1\n", ""), saved) == []  # a newly added key
    assert config_differences(saved, "MODEL:\n  A: 1\n") == ["MODEL.B (only in the saved config)", "SOLVER.LR (only in the saved config)"]
    # how weights are read and what inference explains are not the run's
    explain = "MODEL:\n  EXPLAIN:\n    RANK_BY: alpha\n  CHECKPOINT:\n    TRUST_PICKLE: false\n  A: 1\n"
    assert config_differences(explain, explain.replace("alpha", "contribution").replace("false", "true")) == []
    assert config_differences(explain, explain.replace("A: 1", "A: 2")) == ["MODEL.A: 1 saved, 2 now"]
    (tmp_path / "config.yaml").write_text(saved)
    with pytest.raises(ValueError, match=r"SOLVER.LR: 0.1 saved, 0.2 now.*nothing was changed"):
        refuse_other_run(str(tmp_path), now)
    assert (tmp_path / "config.yaml").read_text() == saved


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = SafeCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.save("model_0000001")
    with pytest.raises(OSError):
        ckpt.save("model_0000002")
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_training_stream_positions_are_fixed_and_resumable():
    dicts = [{"i": i} for i in range(7)]

    def mapper(d):  # records the image and a draw of the augmentation's generator
        return d["i"], float(np.random.random())

    a, b = PositionDataset(dicts, mapper, seed=3), PositionDataset(dicts, mapper, seed=3)
    first = [a[p] for p in range(21)]
    assert [b[p] for p in reversed(range(21))] == first[::-1]  # any order, same samples
    for epoch in range(3):  # each epoch is a permutation
        assert sorted(i for i, _ in first[7 * epoch: 7 * epoch + 7]) == list(range(7))
    assert [i for i, _ in first[:7]] != [i for i, _ in first[7:14]]
    assert PositionDataset(dicts, mapper, seed=4)[0] != first[0] or PositionDataset(dicts, mapper, seed=4)[1] != first[1]
    # two processes share the positions; a resumed stream skips the consumed ones
    r0 = list(zip(range(3), PositionSampler(start=10, rank=0, world_size=2)))
    r1 = list(zip(range(3), PositionSampler(start=10, rank=1, world_size=2)))
    assert [p for _, p in r0] == [10, 12, 14] and [p for _, p in r1] == [11, 13, 15]
    with pytest.raises(ValueError, match="training set is empty"):
        PositionDataset([], mapper, seed=0)


def _ls_cfg(tmp_path, tiny_nt_set):
    prefix = tiny_nt_set[0]
    cfg = get_cfg()
    add_voting_config(cfg)
    merge_config_file(cfg, os.path.join(ROOT, "configs/nt_ls.yaml"))
    opts = list(TINY_OPTS)
    opts[1] = f"('{prefix}_fold0_train',)"
    cfg.merge_from_list(opts + ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "1",
                                "DATALOADER.NUM_WORKERS", "0", "MODEL.VOTING.KMEANS_NUM_IMAGES", "2",
                                "OUTPUT_DIR", str(tmp_path)])
    return cfg


@pytest.mark.slow
def test_non_finite_loss_stops_naming_iteration_and_term(tmp_path, tiny_nt_set):
    trainer = Trainer(_ls_cfg(tmp_path, tiny_nt_set))
    trainer.resume_or_load(resume=False)
    model = trainer._trainer.model
    forward = model.forward

    def poisoned(batched_inputs):
        losses = forward(batched_inputs)
        if trainer.iter >= 3:
            losses["loss_rpn_cls"] = losses["loss_rpn_cls"] * float("nan")
        return losses

    model.forward = poisoned
    with pytest.raises(FloatingPointError, match=r"iteration=3(.|\n)*'loss_rpn_cls': nan"):  # detectron2's stop
        trainer.train()
    # the checkpoint of iteration 1 is the last one and loads
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists() and not (tmp_path / "model_final.pth").exists()
    state = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(tiny_datasets_root, tmp_path):
    """LS on the tiny set, 8 iterations, checkpoints every 2: one run straight
    through; another killed (SIGKILL) after its first checkpoint and resumed."""
    opts = ["--config-file", os.path.join(ROOT, "configs/nt_ls.yaml")]
    common = TINY_OPTS + ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2",
                          "SEED", "11", "MODEL.VOTING.KMEANS_NUM_IMAGES", "2"]
    _finish(_train_net(opts + common + ["OUTPUT_DIR", str(tmp_path / "straight")], tiny_datasets_root))

    killed = tmp_path / "killed"
    proc = _train_net(opts + common + ["OUTPUT_DIR", str(killed)], tiny_datasets_root)
    deadline = time.time() + 300
    while not (killed / "model_0000001.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (killed / "model_final.pth").exists()
    log = _finish(_train_net(opts + ["--resume"] + common + ["OUTPUT_DIR", str(killed)], tiny_datasets_root))
    assert "Starting training from iteration" in log and "from iteration 0" not in log

    a, b = _weights(tmp_path / "straight" / "model_final.pth"), _weights(killed / "model_final.pth")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.slow
def test_a_new_run_does_not_overwrite_another_runs_folder(tiny_datasets_root, tmp_path):
    args = ["--config-file", os.path.join(ROOT, "configs/nt_ls.yaml")] + TINY_OPTS
    out = tmp_path / "run"
    out.mkdir()
    (out / "model_0000099.pth").write_bytes(b"someone's checkpoint")
    proc = _train_net(args + ["SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out)], tiny_datasets_root)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "holds the checkpoints of another run" in log
    assert (out / "model_0000099.pth").read_bytes() == b"someone's checkpoint" and not (out / "config.yaml").exists()


# Every anchor and every proposal is used (no random subsampling) and every image
# keeps the same number of proposals, so a loss over two images is the mean of
# the two one-image losses, as DDP's gradient averaging makes it (each image
# has one NT: the negative images, which have one proposal fewer, are left out).
EXACT_SPLIT = ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", "1000000", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "1000000",
               "MODEL.RPN.POST_NMS_TOPK_TRAIN", "20", "MODEL.RPN.NMS_THRESH", "1.0", "SOLVER.OPTIMIZER", "SGD",
               "SOLVER.BASE_LR", "0.01", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "1", "SEED", "5",
               "INPUT.ULTRASOUND.HFLIP_PROB", "0.0", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True"]


@pytest.mark.slow
def test_two_gloo_processes_train_and_evaluate_as_one(tiny_datasets_root, tmp_path):
    args = ["--config-file", os.path.join(ROOT, "configs/nt_fpn_R18.yaml")] + TINY_OPTS + EXACT_SPLIT
    one = _train_net(args + ["OUTPUT_DIR", str(tmp_path / "one")], tiny_datasets_root)
    _finish(one)
    _finish(_train_net(["--num-gpus", "2"] + args + ["OUTPUT_DIR", str(tmp_path / "two")], tiny_datasets_root))
    a, b = _weights(tmp_path / "one" / "model_final.pth"), _weights(tmp_path / "two" / "model_final.pth")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # evaluation: 2 processes gather the same detections and metrics as 1
    results = []
    for n, name in ((1, "eval1"), (2, "eval2")):
        ev = ["--config-file", str(tmp_path / "one" / "config.yaml"), "--eval-only", "--num-gpus", str(n),
              "MODEL.WEIGHTS", str(tmp_path / "one" / "model_final.pth"), "DATASETS.TEST", "('nt_fold0_test',)",
              "OUTPUT_DIR", str(tmp_path / name)]
        _finish(_train_net(ev, tiny_datasets_root))
        results.append(json.load(open(tmp_path / name / "eval_results.json")))
    assert results[0]["nt"] == pytest.approx(results[1]["nt"], nan_ok=True)
    assert results[0]["bbox"] == pytest.approx(results[1]["bbox"], nan_ok=True)
    assert results[0]["nt"]["num_images"] == 6


@pytest.mark.slow
def test_same_seed_same_weights_on_cpu(tmp_path, tiny_nt_set):
    """Determinism: two trainings with one seed give identical weights (the
    synthetic set and the folds are byte-identical per seed: test_synthetic,
    test_folds)."""
    finals = []
    for name in ("a", "b"):
        cfg = _ls_cfg(tmp_path / name, tiny_nt_set)
        cfg.merge_from_list(["SEED", "3", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100"])
        seed_all_rng(cfg.SEED)  # what detectron2's default_setup does in tools/train_net.py
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        finals.append(_weights(tmp_path / name / "model_final.pth"))
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k]), k


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["train_net", "train_voting"])
def test_training_twice_gives_identical_weights_with_the_configs_own_seed(tiny_datasets_root, tmp_path, tool):
    """Two separate training processes with nothing but the shipped configs
    give the same weights: the configs fix detectron2's SEED (its default, -1,
    draws a new seed in every process, which made ``make demo`` differ from
    run to run) and both entry points seed from it. Data-loader workers, flips
    and the context sampler's random draws all run; ``train_voting`` also
    builds stage 2's fresh context branch."""
    opts = TINY_OPTS + ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "2"]
    finals = []
    for name in ("a", "b"):
        out = tmp_path / name
        if tool == "train_net":
            proc = _train_net(["--config-file", os.path.join(ROOT, "configs/nt_voting.yaml")] + opts
                              + ["OUTPUT_DIR", str(out)], tiny_datasets_root)
            finals.append(out / "model_final.pth")
        else:
            env = dict(os.environ, DETECTRON2_DATASETS=str(tiny_datasets_root), PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
            proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools/train_voting.py"), "--fold", "0",
                                     "--output-dir", str(out)] + opts[2:], env=env, cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            finals.append(out / "stage2_voting" / "model_final.pth")
        _finish(proc)
    if tool == "train_voting":  # stage 1 finished, stage 2 trained in a later process: seeded per stage
        import shutil

        shutil.rmtree(tmp_path / "b" / "stage2_voting")
        _finish(subprocess.Popen(proc.args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    a, b = _weights(finals[0]), _weights(finals[1])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
