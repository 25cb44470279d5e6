"""The one rule of every tool (voting_det.cli, docs/reliability.md "Failure
handling"): a user error is one ``error:`` line on stderr naming the file or
key, exit code 2, found before the model is built and before anything is
written; a run that processed nothing exits 1 with its outputs written; the
known third-party warnings are silenced, nothing else.

The tools run in this process (``cli.run_tool(tool.main, argv)``, as their
``__main__`` does); two cases run them as real processes for the exit code."""
import glob
import importlib.util
import logging
import os
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from voting_det import cli
from voting_det.engine.checkpoint import SafeCheckpointer
from voting_det.inference import UNREADABLE_IMAGE, read_predictions

from .helpers import load_tool as tool  # tools/<name>.py as a module
from .helpers import run_tool as run  # exit code and stderr of tools/<name>.py argv, run by its guard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "nt_ls.yaml")
TOOLS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "tools", "*.py")))


def assert_user_error(result, *named):
    """Exit code 2 and exactly one non-empty stderr line, ``error: ...``, naming ``named``."""
    got, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == cli.EXIT_USER_ERROR and len(lines) == 1, (got, err)
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    for text in named:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


def assert_nothing_processed(result, *named):
    """Exit code 1, the last stderr line ``error: ...`` naming ``named`` (above it
    the run's log: a warning naming each unreadable file)."""
    got, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == cli.EXIT_NOTHING_PROCESSED and "Traceback" not in err, (got, err)
    assert lines[-1].startswith("error: ") and all(str(text) in lines[-1] for text in named), err
    assert sum(line.startswith("error: ") for line in lines) == 1, err


def _images(folder, names, readable=True):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if readable:
            cv2.imwrite(str(folder / name), np.random.default_rng(0).integers(0, 255, (60, 80), dtype=np.uint8))
        else:
            (folder / name).write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny LS model (K = 4) saved as config.yaml + model.pth: (config, weights)."""
    folder = tmp_path_factory.mktemp("cli_model")
    cfg = cli.load_config(CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.VOTING.NUM_PRIMITIVES", "4", "MODEL.VOTING.FC_DIMS",
                                   "[16]", "MODEL.RPN.POST_NMS_TOPK_TEST", "8", "INPUT.MIN_SIZE_TEST", "64",
                                   "INPUT.MAX_SIZE_TEST", "128"])
    torch.manual_seed(0)
    SafeCheckpointer(build_model(cfg), str(folder)).save("model")
    (folder / "config.yaml").write_text(cfg.dump())
    return str(folder / "config.yaml"), str(folder / "model.pth")


@pytest.fixture
def fake_weights(tmp_path):
    """A weights file that exists (never read: every case fails before the model)."""
    path = tmp_path / "weights.pth"
    path.write_bytes(b"never read")
    return str(path)


@pytest.fixture
def bad_key_yaml(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  VOTING:\n    NUM_PRIMITIVEZ: 4\n')
    return path


# ------------------------------------------------------------------ every tool

@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_has_the_guard_a_parser_and_help(name, capsys):
    source = open(os.path.join(REPO, "tools", f"{name}.py")).read()
    assert 'if __name__ == "__main__":\n    cli.run_tool(main)\n' in source, name
    assert callable(tool(name).build_parser)
    with pytest.raises(SystemExit) as exit_:
        tool(name).main(["--help"])
    assert exit_.value.code == 0 and "usage: tools/" in capsys.readouterr().out


def test_argparse_errors_are_one_line(capsys):
    line = assert_user_error(run(capsys, "predict", "--config-file", CONFIG, "--input", "x"), "--output")
    assert "tools/predict.py --help" in line
    assert_user_error(run(capsys, "make_synthetic_nt", "--out", "x", "--num", "3", "--size", "12"), "--size", "HxW")


# ------------------------------------------------------------------ config files and keys

@pytest.mark.parametrize("name,extra", [
    ("predict", ["--input", ".", "--output", "p.csv"]),
    ("explain", ["--input", ".", "--output", "out"]),
    ("primitive_atlas", ["--input", ".", "--output", "out"]),
    ("faithfulness", ["--dataset", "nt_fold0_test", "--output", "out"]),
    ("train_net", []),
])
def test_missing_config_file(name, extra, capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert_user_error(run(capsys, name, "--config-file", missing, *extra), "--config-file", missing, "not found")
    assert os.listdir(tmp_path) == []


def test_missing_config_file_of_train_voting(capsys, tmp_path):
    missing, out = tmp_path / "nope.yaml", tmp_path / "out"
    assert_user_error(run(capsys, "train_voting", "--lcf-config", missing, "--output-dir", out),
                      "--lcf-config", missing)
    assert not out.exists()


def test_misspelled_key_in_a_config_file(capsys, bad_key_yaml, tmp_path, fake_weights):
    for name, extra in (("predict", ["--input", tmp_path, "--output", tmp_path / "p.csv"]),
                        ("explain", ["--input", tmp_path, "--output", tmp_path / "out"]),
                        ("train_net", ["OUTPUT_DIR", tmp_path / "run"])):
        assert_user_error(run(capsys, name, "--config-file", bad_key_yaml, *extra, "MODEL.WEIGHTS", fake_weights),
                          bad_key_yaml, "MODEL.VOTING.NUM_PRIMITIVEZ", "spelling")
    assert sorted(os.listdir(tmp_path)) == ["typo.yaml", "weights.pth"]


def test_config_file_that_is_not_yaml(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [\n")
    assert_user_error(run(capsys, "train_net", "--config-file", broken), broken, "YAML")


def test_misspelled_and_invalid_overrides(capsys, tmp_path, fake_weights):
    images = _images(tmp_path / "in", ["a.png"])
    for name, extra in (("predict", ["--output", tmp_path / "p.csv"]), ("explain", ["--output", tmp_path / "out"])):
        assert_user_error(run(capsys, name, "--config-file", CONFIG, "--input", images, *extra,
                              "MODEL.WEIGHTS", fake_weights, "MODEL.VOTING.NUM_PRIMITIVEZ", "4"),
                          "MODEL.VOTING.NUM_PRIMITIVEZ")
    assert_user_error(run(capsys, "train_net", "--config-file", CONFIG, "OUTPUT_DIR", tmp_path / "run",
                          "MODEL.VOTING.NUM_PRIMITIVES", "0"), "MODEL.VOTING.NUM_PRIMITIVES", ">= 1")
    assert_user_error(run(capsys, "train_net", "--config-file", CONFIG, "MODEL.WEIGHTS"), "odd length")
    assert_user_error(run(capsys, "train_voting", "--output-dir", tmp_path / "two", "SOLVER.MAX_ITERR", "3"),
                      "SOLVER.MAX_ITERR")
    assert_user_error(run(capsys, "demo", "--datasets", tmp_path / "data", "--output-dir", tmp_path / "demo",
                          "MODEL.CONTEXT.NUM_BOXEZ", "2"), "MODEL.CONTEXT.NUM_BOXEZ")
    assert sorted(os.listdir(tmp_path)) == ["in", "weights.pth"]


@pytest.mark.parametrize("name,before", [
    ("predict", ["--input", ".", "--config-file", CONFIG]),
    ("explain", ["--input", ".", "--config-file", CONFIG]),
    ("train_net", ["--config-file", CONFIG]),
])
def test_options_after_the_overrides_are_refused(name, before, capsys, tmp_path):
    line = assert_user_error(run(capsys, name, *before, "MODEL.WEIGHTS", "w.pth", "--output", tmp_path / "o.csv"),
                             "--output", "before MODEL.WEIGHTS")
    assert "option" in line
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ inputs, weights, outputs

@pytest.mark.parametrize("name", ["predict", "explain", "primitive_atlas"])
def test_missing_and_empty_inputs(name, capsys, tmp_path, fake_weights):
    out = tmp_path / ("p.csv" if name == "predict" else "out")
    common = ["--config-file", CONFIG, "--output", out]
    assert_user_error(run(capsys, name, *common, "--input", tmp_path / "nope", "MODEL.WEIGHTS", fake_weights),
                      "--input", tmp_path / "nope", "not found")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image here")
    assert_user_error(run(capsys, name, *common, "--input", tmp_path / "empty", "MODEL.WEIGHTS", fake_weights),
                      "--input", tmp_path / "empty", "no image")
    assert not out.exists()


@pytest.mark.parametrize("name,argv,named", [
    ("convert_fetus_framework", ["--root", "{missing}", "--out", "{tmp}/coco"], "--root"),
    ("flag_calipers", ["--root", "{missing}", "--out", "{tmp}/c.json"], "--root"),
    ("measure_synthetic", ["--synthetic", "{missing}", "--out", "{tmp}/m"], "--synthetic"),
    ("learning_curve", ["LS={missing}", "--out", "{tmp}/curves"], "LS"),
    ("learning_curve", ["{missing}", "--out", "{tmp}/curves"], "LABEL=TRAIN_DIR"),
    ("compare_evals", ["A={missing}", "B={missing}", "--out", "{tmp}/c.md"], "A={missing}"),
    ("benchmark_speed", ["--sizes", "big", "--out", "{tmp}/speed"], "--sizes big"),
    ("benchmark", ["--methods", "no_such_method", "--root", "{tmp}/runs"], "no_such_method"),
    ("benchmark", ["--methods", "ls", "--folds", "0", "--root", "{tmp}/runs", "SOLVER.MAX_ITERR", "3"],
     "SOLVER.MAX_ITERR"),
    ("make_synthetic_nt", ["--out", "{tmp}/syn", "--num", "0"], "--num 0"),
])
def test_other_tools_user_errors(name, argv, named, capsys, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    fill = {"missing": tmp_path / "missing", "tmp": work}
    assert_user_error(run(capsys, name, *(a.format(**fill) for a in argv)), named.format(**fill))
    assert os.listdir(work) == []


def test_existing_non_empty_synthetic_output(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    assert_user_error(run(capsys, "make_synthetic_nt", "--out", tmp_path, "--num", "2"), tmp_path, "--overwrite")
    assert os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.parametrize("name", ["predict", "explain", "primitive_atlas"])
def test_missing_and_empty_weights(name, capsys, tmp_path):
    images = _images(tmp_path / "in", ["a.png"])
    out = tmp_path / ("p.csv" if name == "predict" else "out")
    common = ["--config-file", CONFIG, "--input", images, "--output", out]
    missing = tmp_path / "missing.pth"
    assert_user_error(run(capsys, name, *common, "MODEL.WEIGHTS", missing), "MODEL.WEIGHTS", missing, "not found")
    assert_user_error(run(capsys, name, *common), "MODEL.WEIGHTS", "empty")
    assert not out.exists()


def test_missing_weights_of_faithfulness_and_eval_only(capsys, tmp_path, tiny_nt_set):
    missing = tmp_path / "missing.pth"
    assert_user_error(run(capsys, "faithfulness", "--config-file", CONFIG, "--dataset", f"{tiny_nt_set[0]}_fold0_test",
                          "--output", tmp_path / "f", "MODEL.WEIGHTS", missing), "MODEL.WEIGHTS", missing)
    assert_user_error(run(capsys, "train_net", "--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", missing,
                          "OUTPUT_DIR", tmp_path / "eval"), "MODEL.WEIGHTS", missing)
    assert os.listdir(tmp_path) == []


def test_pickle_weights_are_refused_before_the_model(capsys, tmp_path):
    images = _images(tmp_path / "in", ["a.png"])
    pickle_file = tmp_path / "weights.pkl"
    pickle_file.write_bytes(b"never unpickled")
    assert_user_error(run(capsys, "predict", "--config-file", CONFIG, "--input", images, "--output",
                          tmp_path / "p.csv", "MODEL.WEIGHTS", pickle_file), pickle_file, "TRUST_PICKLE")
    assert not (tmp_path / "p.csv").exists()


def test_wrong_and_foreign_prediction_outputs(capsys, tmp_path, fake_weights):
    images = _images(tmp_path / "in", ["a.png"])
    common = ["--config-file", CONFIG, "--input", images]
    assert_user_error(run(capsys, "predict", *common, "--output", tmp_path / "p.txt", "MODEL.WEIGHTS", fake_weights),
                      "--output", "p.txt", ".csv")
    assert not (tmp_path / "p.txt").exists()
    mine = tmp_path / "mine.csv"
    mine.write_text("id,value\n1,2\n")
    assert_user_error(run(capsys, "predict", *common, "--output", mine, "MODEL.WEIGHTS", fake_weights), mine)
    assert mine.read_text() == "id,value\n1,2\n"


def test_existing_explanations_are_refused_before_the_model(capsys, tmp_path, fake_weights):
    images = _images(tmp_path / "in", ["a.png"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("{}")
    assert_user_error(run(capsys, "explain", "--config-file", CONFIG, "--input", images, "--output", out,
                          "MODEL.WEIGHTS", fake_weights), out / "a.json", "--overwrite")
    assert os.listdir(out) == ["a.json"] and (out / "a.json").read_text() == "{}"


def test_unknown_dataset(capsys, tmp_path, fake_weights):
    assert_user_error(run(capsys, "explain", "--config-file", CONFIG, "--dataset", "no_such_set", "--output",
                          tmp_path / "out", "MODEL.WEIGHTS", fake_weights), "--dataset no_such_set", "registered")
    assert_user_error(run(capsys, "train_net", "--config-file", CONFIG, "DATASETS.TRAIN", "('no_such_set',)",
                          "OUTPUT_DIR", tmp_path / "run"), "DATASETS.TRAIN", "no_such_set")
    assert sorted(os.listdir(tmp_path)) == ["weights.pth"]


def test_train_net_refuses_another_runs_folder(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last_checkpoint").write_text("model_0000009.pth")
    assert_user_error(run(capsys, "train_net", "--config-file", CONFIG, "OUTPUT_DIR", run_dir), run_dir, "--resume")
    assert os.listdir(run_dir) == ["last_checkpoint"]


# ------------------------------------------------------------------ runs that process nothing

def test_predict_with_every_image_unreadable_exits_1_with_the_error_rows(capsys, tmp_path, model_files):
    config, weights = model_files
    images = _images(tmp_path / "in", ["a.png", "b.jpg"], readable=False)
    out = tmp_path / "p.csv"
    argv = ["--config-file", config, "--input", images, "--output", out, "--no-progress", "MODEL.WEIGHTS", weights]
    for _ in range(2):  # a rerun finds only error rows in the table: still nothing processed
        assert_nothing_processed(run(capsys, "predict", *argv), images, "none of its 2")
        rows = read_predictions(str(out))
        assert [r["file"] for r in rows] == ["a.png", "b.jpg"] and {r["error"] for r in rows} == {UNREADABLE_IMAGE}


def test_explain_with_every_image_unreadable_exits_1(capsys, tmp_path, model_files):
    config, weights = model_files
    images = _images(tmp_path / "in", ["a.png"], readable=False)
    assert_nothing_processed(run(capsys, "explain", "--config-file", config, "--input", images, "--output",
                                 tmp_path / "out", "--no-progress", "MODEL.WEIGHTS", weights), images)
    assert not (tmp_path / "out").exists()


def test_predict_succeeds_when_some_images_are_readable(capsys, tmp_path, model_files):
    config, weights = model_files
    images = _images(tmp_path / "in", ["bad.png"], readable=False)
    _images(images, ["good.png"])
    code, err = run(capsys, "predict", "--config-file", config, "--input", images, "--output", tmp_path / "p.jsonl",
                    "--no-progress", "MODEL.WEIGHTS", weights)
    assert code == 0 and "error:" not in err
    by_file = {r["file"]: r for r in read_predictions(str(tmp_path / "p.jsonl"))}
    assert by_file["bad.png"]["error"] == UNREADABLE_IMAGE and by_file["good.png"]["error"] is None


def test_train_net_still_evaluates_after_its_checks(capsys, tmp_path, model_files, tiny_nt_set):
    config, weights = model_files
    code, err = run(capsys, "train_net", "--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights,
                    "DATASETS.TEST", f"('{tiny_nt_set[0]}_fold0_test',)", "TEST.NT_EVAL.NUM_BOOTSTRAP", "0",
                    "OUTPUT_DIR", tmp_path / "eval")
    assert code == 0 and "error:" not in err, err
    assert (tmp_path / "eval" / "eval_results.json").is_file()


# ------------------------------------------------------------------ warnings

def test_only_the_known_third_party_warnings_are_silenced():
    fx = logging.getLogger(cli.FX_TRACING_LOGGER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.quiet_known_warnings()
        cli.quiet_known_warnings()  # idempotent
        warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile`", FutureWarning)
        warnings.warn("pkg_resources is deprecated as an API. See https://setuptools.pypa.io", UserWarning)
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the indexing argument.",
                      UserWarning)
        warnings.warn("`torch.jit.trace` is deprecated", FutureWarning)  # not one of them
        warnings.warn("pkg_resources is deprecated as an API", DeprecationWarning)  # other category
        warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in caught] == ["`torch.jit.trace` is deprecated",
                                                "pkg_resources is deprecated as an API", "something else"]
    assert sum(type(f).__name__ == "_DropMessage" for f in fx.filters) == 1
    keep = logging.LogRecord(fx.name, logging.WARNING, __file__, 1, "another message", None, None)
    drop = logging.LogRecord(fx.name, logging.WARNING, __file__, 1, cli.FX_TRACING_MESSAGE + " for both", None, None)
    assert fx.filter(keep) and not fx.filter(drop)


def test_importing_the_package_installs_no_filter():
    before = list(warnings.filters)
    spec = importlib.util.spec_from_file_location("cli_copy", os.path.join(REPO, "voting_det", "cli.py"))
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    with open(os.path.join(REPO, "voting_det", "__init__.py")) as f:
        assert "quiet_known_warnings" not in f.read()
    assert warnings.filters == before


# ------------------------------------------------------------------ the real exit codes (processes)

def _process(*argv):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.slow
def test_process_user_error_is_one_line_without_warnings(tmp_path, fake_weights):
    images = _images(tmp_path / "in", ["a.png"])
    done = _process("tools/predict.py", "--config-file", CONFIG, "--input", images, "--output", tmp_path / "p.csv",
                    "MODEL.WEIGHTS", fake_weights, "MODEL.VOTING.NUM_PRIMITIVEZ", "4")
    assert_user_error((done.returncode, done.stderr), "MODEL.VOTING.NUM_PRIMITIVEZ")  # no torch.jit / pkg_resources
    assert done.stdout == "" and not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_process_that_reads_no_image_exits_1(tmp_path, model_files):
    config, weights = model_files
    images = _images(tmp_path / "in", ["a.png"], readable=False)
    done = _process("tools/predict.py", "--config-file", config, "--input", images, "--output", tmp_path / "p.csv",
                    "--no-progress", "MODEL.WEIGHTS", weights)
    assert_nothing_processed((done.returncode, done.stderr), "--input", images)
    for message in ("Warning", "No checkpoint found", "is_fx_tracing"):
        assert message not in done.stderr, done.stderr
    assert read_predictions(str(tmp_path / "p.csv"))[0]["error"] == UNREADABLE_IMAGE
