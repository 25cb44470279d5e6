"""Your own data from the command line (README "Your own data"): two folders
converted with the converter, one trained on whole, the other tested on, with
no Python wrapper: every step of the walk-through is a tool run in a
subprocess, as a user types it (here at the smoke configs' size); the
fixture's conversion and the error checks run the tools in this process, by
their own guard."""
import json
import os
import subprocess
import sys

import pytest

from voting_det import cli

from .helpers import load_tool, run_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--size", "144x192", "--workers", "1", "--no-progress"]
# the smoke schedule on the tiny sets (the README's commands run the full one)
SMOKE = ["INPUT.MIN_SIZE_TRAIN", "(144,)", "INPUT.MIN_SIZE_TEST", "144", "INPUT.MAX_SIZE_TRAIN", "256",
         "INPUT.MAX_SIZE_TEST", "256", "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
         "DATALOADER.NUM_WORKERS", "0", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "TEST.NT_EVAL.NUM_BOOTSTRAP", "20", "MODEL.DEVICE", "cpu"]


def tool(*args, cwd):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", args[0]), *args[1:]], cwd=cwd,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    """Two sets in the public layout (images + spreadsheet), converted with the
    converter: mine (18 images, seed 11) and theirs (12 images, seed 12). The
    two tools run in this process, by their own guard, as their ``__main__``
    does (an interpreter start-up per call cost more than the tools' work)."""
    root = tmp_path_factory.mktemp("own_data")
    for name, num, seed in (("mine", 18, 11), ("theirs", 12, 12)):
        for argv in (["make_synthetic_nt", "--out", root / f"{name}_raw", "--num", num, "--seed", seed, *TINY],
                     ["convert_fetus_framework", "--root", root / f"{name}_raw", "--out", root / f"{name}_coco",
                      "--no-progress"]):
            code = cli.exit_code(load_tool(argv[0]).main, [str(a) for a in argv[1:]])
            assert code == 0, argv
    return root


@pytest.mark.slow
def test_train_on_one_folder_evaluate_on_another_and_compare_from_the_shell(two_folders):
    root = two_folders
    data = ["--data", f"mine={root / 'mine_coco'}", "--data", f"theirs={root / 'theirs_coco'}"]
    # 1. Proposed on all of mine (both stages), tested on all of theirs
    out = tool("train_voting.py", *data, "--train-set", "mine_all", "--test-set", "theirs_all",
               "--output-dir", str(root / "proposed"), *SMOKE, cwd=REPO)
    for stage in ("stage1_lcf", "stage2_voting"):
        log = (root / "proposed" / stage / "log.txt").read_text()
        assert "training on ['mine_all'], testing on ['theirs_all']" in log and "Starting training" in log
    assert "theirs_all" in out and "final model:" in out
    # 2. detectron2's FPN R18 on the same, with its standard tool and DATASETS keys
    tool("train_net.py", *data, "--config-file", os.path.join(REPO, "configs/nt_fpn_R18.yaml"),
         "DATASETS.TRAIN", "('mine_all',)", "DATASETS.TEST", "('theirs_all',)", "OUTPUT_DIR", str(root / "fpn"),
         *SMOKE, cwd=REPO)
    theirs = json.loads((root / "theirs_coco/all.json").read_text())
    metrics = json.loads((root / "proposed/stage2_voting/inference/theirs_all/nt_metrics.json").read_text())
    assert metrics["dataset"] == "theirs_all" and metrics["metrics"]["num_images"] == len(theirs["images"]) == 12
    # 3. compare the two models image by image on theirs
    table = tool("compare_evals.py", f"Proposed={root / 'proposed/stage2_voting/inference/theirs_all'}",
                 f"FPN R18={root / 'fpn/inference/theirs_all'}", cwd=REPO)
    assert "# 12 images" in table and "| minus Proposed:" in table
    assert next(line for line in table.splitlines() if line.startswith("| FPN R18 |")).count("[") >= 4
    # 4. the benchmark runner on the same outside split (its evaluation: train_net.py --eval-only --data,
    #    from the saved config): the same profiles, tables and paired comparisons
    tool("benchmark.py", "--profile", "smoke", *data, "--train-set", "mine_all", "--test-set", "theirs_all",
         "--methods", "ls", "fpn_R18", "--root", str(root / "bench"), "--out", str(root / "bench_tables"),
         "--speed", "", cwd=REPO)
    text = (root / "bench_tables/table.md").read_text()
    assert "Trained on `mine_all`, tested on `theirs_all`" in text
    assert "LS (voting_det)" in text and "FPN, R18 (detectron2)" in text and "Paired differences" in text
    run = json.loads((root / "bench/smoke/outside/ls/mine_all-on-theirs_all/run.json").read_text())
    assert run["split_sets"] == {"train": "mine_all", "test": "theirs_all"}


def test_data_option_registers_a_folder_and_names_what_is_wrong(two_folders, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    root = two_folders
    names = cli.register_data([f"ownA={root / 'mine_coco'}"])
    assert "ownA_all" in names and "ownA_fold2_test" in names and "ownA_fold3_train" not in names
    assert MetadataCatalog.get("ownA_all").thing_classes == ["NT"]
    assert len(DatasetCatalog.get("ownA_all")) == 18
    assert cli.register_data([f"ownA={root / 'mine_coco'}"])  # the same folder again: fine
    cases = [
        ("ownA", str(root / "theirs_coco"), "is taken"),
        ("nt", str(root / "theirs_coco"), "is taken"),
        ("9bad", str(root / "theirs_coco"), "NAME must be letters"),
        ("ownB", str(tmp_path / "absent"), "is not a folder"),
        ("ownB", str(tmp_path), "no all.json"),
    ]
    for name, path, message in cases:
        with pytest.raises(cli.UserError, match=message):
            cli.register_data([f"{name}={path}"])
    with pytest.raises(cli.UserError, match="NAME=PATH"):
        cli.register_data([str(root)])


def test_outside_split_errors_are_one_line_before_training(tmp_path, capsys):
    bench, voting = "benchmark", "train_voting"  # run by their guard in this process (tests/helpers.py)
    cases = [
        ([bench, "--train-set", "x_all"], "needs --train-set and --test-set"),
        ([bench, "--folds", "0", "--train-set", "a", "--test-set", "b"], "choose the split two ways"),
        ([bench, "--train-set", "nope_all", "--test-set", "nt_all"], "--train-set nope_all: not a registered"),
        ([voting, "--fold", "0", "--train-set", "nt_all", "--output-dir", str(tmp_path / "o")], "--fold 0 and --train-set"),
        ([voting, "--test-set", "nt_all", "--output-dir", str(tmp_path / "o")], "--test-set needs --train-set"),
        ([voting, "--train-set", "mine9_all", "--output-dir", str(tmp_path / "o")], "not registered"),
    ]
    for argv, message in cases:
        code, err = run_tool(capsys, *argv)
        assert code == 2, (argv, err[-2000:])
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert not (tmp_path / "o").exists()
