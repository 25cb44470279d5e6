"""The cross-validation runner: runs in subprocesses, resumes, refuses a folder
of another config, tabulates, and refuses runs with different test settings."""
import json
import multiprocessing
import os
import signal
import sys
import time

import pytest

from benchmarks import runner as benchmark
from benchmarks import tables
from benchmarks.runner import PROFILES, plan_runs, run_all, run_one
from benchmarks.tables import caliper_flags, tabulate
from voting_det.evaluation import SettingsMismatchError

TINY = ["INPUT.MIN_SIZE_TRAIN", "(144,)", "INPUT.MIN_SIZE_TEST", "144"]


@pytest.fixture
def datasets_root(tiny_datasets_root):
    return tiny_datasets_root


@pytest.mark.slow
def test_runner_trains_evaluates_resumes_and_tabulates(datasets_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_root))
    runs = plan_runs(["ls"], [0], "smoke", str(tmp_path / "runs"), extra_opts=TINY)
    messages = []
    # a tuning trial: trained and evaluated on the validation split only, not finished
    assert run_all(runs, log=messages.append, val_only=True) == []
    run = runs[0]
    assert not run.finished() and os.path.isfile(os.path.join(run.eval_dir("val"), "nt_metrics.json"))
    assert not os.path.exists(run.eval_dir("test"))
    assert any("not evaluated" in m for m in messages)
    weights_mtime = os.path.getmtime(run.final_weights())
    # then finished: the test split evaluated, no training again, archived at once
    infos = run_all(runs, log=messages.append, archive=str(tmp_path / "archive0"))
    assert os.path.isfile(tmp_path / "archive0" / "smoke" / "nt" / "ls" / "fold0" / "run.json")
    assert os.path.getmtime(run.final_weights()) == weights_mtime
    assert run.finished() and infos[0]["method"] == "ls" and infos[0]["wall_seconds"] > 0
    for split in ("val", "test"):
        metrics = json.load(open(os.path.join(run.eval_dir(split), "nt_metrics.json")))
        assert metrics["dataset"] == f"nt_fold0_{split}" and "top1_acc" in metrics["metrics"]
    results = json.load(open(os.path.join(run.folder, "eval", "eval_results.json")))
    assert "AP50" in results["nt_fold0_test"]["bbox"] and "paper_auc" in results["nt_fold0_test"]["nt"]
    assert any("[1/1] ls/fold0" in m for m in messages)

    # a rerun skips the finished run
    messages.clear()
    assert run_all(runs, log=messages.append) == [] and "1 already finished" in messages[0]

    # an interrupted run (trained, not evaluated) is evaluated without training again
    os.remove(run.done_file)
    weights_mtime = os.path.getmtime(run.final_weights())
    run_one(run, log=lambda *_: None)
    assert run.finished() and os.path.getmtime(run.final_weights()) == weights_mtime
    # final weights the checkpointer has not tagged (a process killed while writing them) are not "trained"
    tag = os.path.join(os.path.dirname(run.final_weights()), "last_checkpoint")
    assert benchmark.trained(run) and open(tag).read().strip() == "model_final.pth"
    with open(tag, "w") as f:
        f.write("model_0000002.pth")
    assert not benchmark.trained(run)
    with open(tag, "w") as f:
        f.write("model_final.pth")

    # the same folder with another config is refused, nothing changed
    other = plan_runs(["ls"], [0], "smoke", str(tmp_path / "runs"), extra_opts=TINY + ["SOLVER.BASE_LR", "0.5"])[0]
    os.remove(run.done_file)
    with pytest.raises(ValueError, match="holds a run with another config"):
        run_one(other)
    # an inference-only setting changed since training: the same run, evaluated with the new value,
    # and the record shows it (training is not redone: run_one skips a trained run's training)
    readout = plan_runs(["ls"], [0], "smoke", str(tmp_path / "runs"),
                        extra_opts=TINY + ["MODEL.VOTING.BORDER_READOUT_WINDOW", "2"])[0]
    evaluate = readout.commands()[1]
    at = evaluate.index("MODEL.VOTING.BORDER_READOUT_WINDOW")
    assert evaluate[at + 1] == "2" and evaluate.index("--eval-only") < at
    assert run.commands()[1][run.commands()[1].index("MODEL.VOTING.BORDER_READOUT_WINDOW") + 1] == "0"
    assert run.commands()[1][run.commands()[1].index("MODEL.VOTING.TEST_SCORE") + 1] == "last"  # also inference-only
    benchmark._check_or_record_config(readout)
    assert "BORDER_READOUT_WINDOW: 2" in open(os.path.join(run.folder, "run_config.yaml")).read()
    run_one(run, log=lambda *_: None)
    assert "BORDER_READOUT_WINDOW: 0" in open(os.path.join(run.folder, "run_config.yaml")).read()

    out = tmp_path / "tables"
    # the caliper split, with flags planted on the test images (the detector is tested in test_calipers)
    test_files = [r["file_name"] for r in json.load(open(os.path.join(run.eval_dir("test"), "nt_detections.json")))["images"]]
    planted = {os.path.normpath(f): i % 2 == 0 for i, f in enumerate(test_files)}
    monkeypatch.setattr(tables, "caliper_flags", lambda dataset, cache: planted)
    text = tabulate(runs, out_dir=str(out), command="test", num_bootstrap=20)
    assert "| LS (voting_det) | 0 |" in text
    n_with = sum(planted.values())
    assert f"| LS (voting_det) | with calipers | {n_with} |" in text
    assert f"| LS (voting_det) | without calipers | {len(planted) - n_with} |" in text
    for name in ("table.md", "table.csv", "manifest.json", "roc.png"):
        assert (out / name).is_file()
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["runs"][0]["config_sha256_16"] and manifest["profile"] == "smoke"
    assert f"Machine: {manifest['runs'][0]['machine']}. Commits:" in text  # each distinct machine once

    # the archive (small files, detections gzipped, no weights) tabulates to the same table
    archive = tmp_path / "archive"
    dest = benchmark.archive_run(run, str(archive))
    assert os.path.isfile(os.path.join(dest, "eval", "inference", "nt_fold0_test", "nt_detections.json.gz"))
    assert not any(n.endswith(".pth") for _, _, names in os.walk(archive) for n in names)
    archived = plan_runs(["ls"], [0], "smoke", str(archive), extra_opts=TINY)
    assert tabulate(archived, out_dir=str(tmp_path / "tables2"), command="test", num_bootstrap=20) == text
    assert benchmark.archive_run(run, str(archive)) == dest  # the same run again: fine
    info = json.load(open(os.path.join(dest, "run.json")))
    info["finished_at"] = "1999-01-01 00:00:00"
    json.dump(info, open(os.path.join(dest, "run.json"), "w"))
    with pytest.raises(ValueError, match="already archives another ls/fold0"):
        benchmark.archive_run(run, str(archive))
    # ... and the command line refuses it before it would train anything
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bench = [sys.executable, os.path.join(root, "tools", "benchmark.py"), "--profile", "smoke", "--folds", "0",
             "--methods", "ls", "--root", str(tmp_path / "runs"), "--calipers", "no", "--speed", ""]
    env = dict(os.environ, PYTHONPATH=root)
    refused = subprocess.run(bench + ["--archive", str(archive), *TINY], capture_output=True, text=True, cwd=root, env=env)
    assert refused.returncode == 2 and "already archives another ls/fold0" in refused.stderr
    # the command line archives the finished runs of its plan
    cli = subprocess.run(bench + ["--archive", str(tmp_path / "archive2"), "--tabulate-only", *TINY],
                         capture_output=True, text=True, cwd=root, env=env)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "archived 1 finished run(s)" in cli.stdout
    assert os.path.isfile(tmp_path / "archive2" / "smoke" / "nt" / "ls" / "fold0" / "run.json")

    # a run evaluated with other test settings cannot share the table
    path = os.path.join(run.eval_dir("test"), "nt_detections.json")
    data = json.load(open(path))
    data["settings"]["TEST.DETECTIONS_PER_IMAGE"] = 100
    json.dump(data, open(path, "w"))
    with pytest.raises(SettingsMismatchError, match="TEST.DETECTIONS_PER_IMAGE"):
        tabulate(runs, num_bootstrap=5, calipers=False)


@pytest.mark.slow
def test_gpu_profile_runs_a_few_iterations_on_cpu(datasets_root, tmp_path, monkeypatch):
    """The gpu profile (the paper's schedule at 576) builds and trains; only
    the schedule length, batch and device are cut here."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_root))
    assert "SOLVER.STEPS" in PROFILES["gpu"].opts
    cut = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "1", "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0",
           "TEST.NT_EVAL.NUM_BOOTSTRAP", "0"]
    run = plan_runs(["ls"], [0], "gpu", str(tmp_path / "runs"), dataset="nt", extra_opts=cut)[0]
    frozen = run.frozen_configs()
    assert "MIN_SIZE_TEST: 576" in frozen and "BASE_LR: 0.0001" in frozen and "- 1020" in frozen
    run_one(run, log=lambda *_: None)
    assert run.finished()


@pytest.mark.slow
def test_longer_schedule_starts_from_the_lcf_rows_model(datasets_root, tmp_path, monkeypatch):
    """proposed_long: stage 1 is the same fold's LCF run (planned first, refused
    while it has not finished), then Proposed trains the whole schedule from it."""
    import torch

    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets_root))
    assert [r.method.name for r in plan_runs(["proposed_long"], [0, 1], "smoke", str(tmp_path))] == [
        "lcf", "proposed_long", "lcf", "proposed_long"]
    lcf, long_run = plan_runs(["proposed_long"], [0], "smoke", str(tmp_path / "runs"), extra_opts=TINY)
    with pytest.raises(RuntimeError, match="lcf/fold0's final model, which has not finished"):
        run_one(long_run, log=lambda *_: None)
    assert not os.path.exists(long_run.folder)
    run_all([lcf, long_run], log=lambda *_: None)
    assert long_run.finished()
    frozen = long_run.frozen_configs()
    assert f"WEIGHTS: {lcf.final_weights()}" in frozen and "MAX_ITER: 4" in frozen and "ENABLED: true" in frozen
    # the local branch started from the LCF model: after 4 small Adam steps its
    # first convolution is still close to LCF's (a fresh start would not be)
    lcf_state = torch.load(lcf.final_weights(), map_location="cpu", weights_only=True)["model"]
    long_state = torch.load(long_run.final_weights(), map_location="cpu", weights_only=True)["model"]
    key = next(k for k in lcf_state if k.startswith("backbone.") and k.endswith("conv1.weight"))
    assert key in long_state and not any(k.startswith("context") for k in lcf_state)
    drift = (long_state[key] - lcf_state[key]).abs().max().item()
    scale = lcf_state[key].abs().max().item()
    assert drift < 0.05 * scale, (drift, scale)


@pytest.mark.slow
def test_a_killed_run_keeps_the_time_it_ran_for_the_manifest(tmp_path, monkeypatch):
    # the runner itself killed mid-step (as when a machine's session ends): the
    # seconds of that start are on disk, and the finished run's wall time adds
    # them to the next start's (before, only a start that ended normally counted)
    run = plan_runs(["ls"], [0], "smoke", str(tmp_path / "runs"), extra_opts=TINY)[0]
    sleep = lambda seconds: [sys.executable, "-c", f"import time; time.sleep({seconds})"]
    monkeypatch.setattr(benchmark, "HEARTBEAT_SECONDS", 0.2)
    monkeypatch.setattr(benchmark.Run, "commands", lambda self, splits=(): [sleep(4.0), sleep(0.0)])
    child = multiprocessing.get_context("fork").Process(target=run_one, args=(run,), kwargs={"log": lambda *_: None})
    child.start()
    starts_path = os.path.join(run.folder, "starts.json")
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.1)
        if os.path.isfile(starts_path) and json.load(open(starts_path))[-1]["seconds"] >= 1.0:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    killed = json.load(open(starts_path))
    assert len(killed) == 1 and 1.0 <= killed[0]["seconds"] < 4.0 and not run.finished()

    monkeypatch.setattr(benchmark.Run, "commands", lambda self, splits=(): [sleep(0.6), sleep(0.0)])
    info = run_one(run, log=lambda *_: None)
    starts = json.load(open(starts_path))
    assert len(starts) == 2 and starts[0] == killed[0] and starts[1]["seconds"] >= 0.6
    assert info["wall_seconds"] == pytest.approx(killed[0]["seconds"] + starts[1]["seconds"], abs=0.11)
    assert json.load(open(run.done_file))["wall_seconds"] == info["wall_seconds"]


def test_a_copy_without_git_records_the_commit_it_was_given(tmp_path, monkeypatch):
    # a working tree sent to another machine has no .git: the commit comes from the environment
    monkeypatch.setenv("VOTING_DET_COMMIT", "0123abc")
    assert benchmark.git_commit(str(tmp_path)) == "0123abc (copy)"
    monkeypatch.delenv("VOTING_DET_COMMIT")
    assert benchmark.git_commit(str(tmp_path)) == "unknown"
    # a git checkout ignores the variable
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    (repo / "a.txt").write_text("a")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    monkeypatch.setenv("VOTING_DET_COMMIT", "0123abc")
    assert benchmark.git_commit(str(repo)) == head
    (repo / "a.txt").write_text("b")
    assert benchmark.git_commit(str(repo)) == head + "-dirty"


def test_unknown_method_profile_or_fold_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        plan_runs(["yolo"], [0], "cpu", str(tmp_path))
    with pytest.raises(ValueError, match="unknown profile"):
        plan_runs(["ls"], [0], "tpu", str(tmp_path))
    with pytest.raises(ValueError, match="folds must be in"):
        plan_runs(["ls"], [3], "cpu", str(tmp_path))


def test_cost_lines_read_the_speed_table_at_the_profiles_test_size(tmp_path):
    from benchmarks.tables import cost_lines

    speed = {"commit": "abc", "machine": {"device": "cpu", "cpu": "x", "threads": 2},
             "inference": {"576x768": {"ls": {"parameters": 1e6, "time": {"median_ms": 99.0}, "ratio_to_fpn_R50": 0.5}},
                           "480x683": {"ls": {"parameters": 12.9e6, "time": {"median_ms": 148.4}, "ratio_to_fpn_R50": 0.22}}},
             "flops": {"480x683": {"ls": {"gflops": 11.2}}}}
    path = tmp_path / "speed.json"
    path.write_text(json.dumps(speed))
    lines = cost_lines([("ls", "LS"), ("lcf", "LCF")], PROFILES["cpu"], str(path))
    assert "| LS | 12.9 M | 11.2 | 148 | 0.22 |" in lines
    assert not any(line.startswith("| LCF") for line in lines)  # not timed: no row
    assert cost_lines([("ls", "LS")], PROFILES["gpu"], str(path))[-1] == "| LS | 1.0 M | n/a | 99 | 0.50 |"
    assert cost_lines([("ls", "LS")], PROFILES["smoke"], str(path)) == []  # no 160-high size
    assert cost_lines([("ls", "LS")], PROFILES["cpu"], str(tmp_path / "missing.json")) == []


def test_caliper_flags_come_from_the_cache_when_the_set_is_not_converted_here(tmp_path):
    """`make tables` on a machine without the converted real set: the flags
    committed beside the archived runs are used; without them, none."""
    dataset = "voting_det_test_unconverted"  # registered nowhere: no json_file
    assert caliper_flags(dataset, str(tmp_path)) == {}
    flags = {"/data/a.png": True, "/data/b.png": False}
    (tmp_path / f"calipers_{dataset}.json").write_text(json.dumps(flags))
    assert caliper_flags(dataset, str(tmp_path)) == flags
