"""TorchScript and ONNX export (voting_det.export, tools/export_model.py,
docs/export.md) on tiny untrained models (K = 4, small grids, 128-pixel test
size) of every kind: LS, LCF, Proposed and Proposed-BV. The reference is the
eager model's own ``Instances`` (voting_det's predictor, weights read by
SafeCheckpointer): the exported files' boxes, scores, classes (and borders)
on the synthetic test images, and on images of another size than the one
traced, must equal them within the stated tolerance."""
import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from voting_det import cli
from voting_det.engine import build_predictor
from voting_det.engine.checkpoint import SafeCheckpointer
from voting_det.export import (
    BOX_TOLERANCE_PX,
    FILE_NAMES,
    FORMATS,
    METADATA_FILE,
    SCORE_TOLERANCE,
    ExportedModel,
    check_exportable,
    compare_detections,
    detections,
    export_metadata,
    export_model,
    preprocess,
    within_tolerance,
)

from .helpers import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"ls": "nt_ls.yaml", "lcf": "nt_lcf.yaml", "proposed": "nt_voting.yaml", "proposed_bv": "nt_voting_bv.yaml"}
TINY = ["MODEL.DEVICE", "cpu", "MODEL.VOTING.NUM_PRIMITIVES", "4",
        "MODEL.VOTING.GRID_SIZES", "[[3, 8], [4, 12], [4, 12]]", "MODEL.VOTING.FC_DIMS", "[16]",
        "MODEL.CONTEXT.FC_G1_DIMS", "[8]", "MODEL.CONTEXT.FC_G2_DIMS", "[8]",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "8", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256"]
# images of tiny_nt_set compared (144 x 192: network input 128 x 171, the traced size)
NUM_IMAGES = 3


def run_tool(capsys, *argv):
    """Exit code, stdout and stderr of ``tools/export_model.py argv`` run by its guard, in this process."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.run_tool(load_tool("export_model").main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def save_tiny_model(folder, kind, seed=0):
    """A tiny untrained model of ``kind`` saved as config.yaml + model.pth: (config, weights)."""
    os.makedirs(folder, exist_ok=True)
    cfg = cli.load_config(os.path.join(REPO, "configs", CONFIGS[kind]), TINY)
    torch.manual_seed(seed)
    SafeCheckpointer(build_model(cfg), str(folder)).save("model")
    config = os.path.join(folder, "config.yaml")
    with open(config, "w") as f:
        f.write(cfg.dump())
    return config, os.path.join(folder, "model.pth")


@pytest.fixture(scope="module")
def test_images(tiny_nt_set):
    """Synthetic images of the tiny set (BGR), and one of another size and aspect
    ratio (a portrait crop: network input 184 x 128 instead of the traced 128 x 171)."""
    _, source, _ = tiny_nt_set
    paths = sorted(glob.glob(os.path.join(str(source), "**", "*.png"), recursive=True))[:NUM_IMAGES]
    images = {os.path.basename(p): cv2.imread(p, cv2.IMREAD_COLOR) for p in paths}
    first = images[os.path.basename(paths[0])]
    images["portrait crop"] = np.ascontiguousarray(first[:, 40:140])
    return images


_EXPORTS = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, test_images):
    """kind -> (eager predictor, folder with model.ts, model.onnx, export.json), exported once per kind,
    traced on the first test image."""

    def get(kind):
        if kind not in _EXPORTS:
            folder = tmp_path_factory.mktemp(f"export_{kind}")
            config, weights = save_tiny_model(str(folder / "model"), kind)
            cfg = cli.load_config(config, ["MODEL.WEIGHTS", weights])
            predictor = build_predictor(cfg)
            image = preprocess(next(iter(test_images.values())), cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
            out = folder / "exported"
            out.mkdir()
            export_model(predictor.model, image, str(out), FORMATS, metadata=export_metadata(cfg))
            _EXPORTS[kind] = (predictor, str(out))
        return _EXPORTS[kind]

    return get


# ------------------------------------------------------------------ exported == eager

@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_exported_models_equal_the_eager_model(kind, exported, test_images):
    predictor, folder = exported(kind)
    meta = json.loads(open(os.path.join(folder, METADATA_FILE)).read())
    assert meta["input"]["traced_size"] == [128, 171]
    for fmt in FORMATS:
        model = ExportedModel.load(folder, fmt, threads=1)
        assert model.names == tuple(meta["outputs"])
        for name, image in test_images.items():
            eager = predictor(image)["instances"]
            got = model(image)["instances"]
            assert len(eager) > 0, name  # score threshold 0: never vacuous
            assert got.image_size == eager.image_size == image.shape[:2]
            diff = compare_detections(eager, got)
            assert within_tolerance(diff), (kind, fmt, name, diff)
            # the same boxes in the same order for these images (no near-ties), checked directly as well
            torch.testing.assert_close(got.pred_boxes.tensor, eager.pred_boxes.tensor, atol=BOX_TOLERANCE_PX, rtol=0)
            torch.testing.assert_close(got.scores, eager.scores, atol=SCORE_TOLERANCE, rtol=0)
            assert torch.equal(got.pred_classes, eager.pred_classes)
            if kind == "proposed_bv":
                torch.testing.assert_close(got.pred_borders, eager.pred_borders, atol=BOX_TOLERANCE_PX, rtol=0,
                                           equal_nan=True)
            else:
                assert not got.has("pred_borders")


def _nodes(graph):
    """Every node of an ONNX graph, those of its If / Loop subgraphs included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else []) + list(attr.graphs):
                yield from _nodes(sub)


@pytest.mark.slow
def test_onnx_graph_has_the_documented_names_and_exportable_ops(exported):
    _, folder = exported("proposed")
    graph = onnx.load(os.path.join(folder, FILE_NAMES["onnx"])).graph
    (image,) = graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and dims == [3, "height", "width"]
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in graph.output] == ["boxes", "scores", "classes"]
    ops = {node.op_type: node for node in _nodes(graph)}
    # ROIAlign(aligned=True) as ONNX RoiAlign with half-pixel coordinates; the context sampler as GridSample
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in ops["RoiAlign"].attribute}
    assert attrs["coordinate_transformation_mode"] == b"half_pixel"
    assert {"NonMaxSuppression", "GridSample", "TopK"} <= set(ops)
    _, bv_folder = exported("proposed_bv")
    bv = onnx.load(os.path.join(bv_folder, FILE_NAMES["onnx"])).graph
    assert [o.name for o in bv.output] == ["boxes", "scores", "classes", "borders"]


@pytest.mark.slow
def test_exported_graph_outputs_equal_the_traced_function_on_a_resized_image(exported, test_images):
    """The graph alone (no resize, no rescale), against the eager computation it
    records, on a network input of another size than traced."""
    predictor, folder = exported("proposed")
    image = preprocess(test_images["portrait crop"], 128, 256)
    assert tuple(image.shape[1:]) == (184, 128)
    want = detections(predictor.model, image)
    for fmt in FORMATS:
        got = ExportedModel.load(folder, fmt, threads=1).raw(image)
        assert len(got) == len(want) == 3
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            torch.testing.assert_close(g.double(), w.double(), atol=BOX_TOLERANCE_PX, rtol=0)


# ------------------------------------------------------------------ the comparison itself

def _instances(boxes, scores, classes, borders=None):
    inst = Instances((100, 200))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    if borders is not None:
        inst.pred_borders = torch.tensor(borders, dtype=torch.float32).reshape(-1, 4)
    return inst


def test_compare_detections_matches_one_to_one_and_flags_every_kind_of_difference():
    a = _instances([[0, 0, 10, 10], [50, 50, 90, 70]], [0.5, 0.5], [0, 0])
    swapped = _instances([[50, 50, 90.004, 70], [0, 0, 10, 10]], [0.50002, 0.5], [0, 0])
    diff = compare_detections(a, swapped)  # equal scores ranked the other way round still match
    assert diff["max_box_px"] == pytest.approx(0.004, abs=1e-5) and diff["max_score"] == pytest.approx(2e-5, abs=1e-7)
    assert within_tolerance(diff) and diff["matched"] == 2 and diff["unmatched"] == []
    assert not within_tolerance(compare_detections(a, swapped, box_px=0.001))
    moved = _instances([[0, 0, 10, 10], [50, 50, 90.5, 70]], [0.5, 0.5], [0, 0])
    assert compare_detections(a, moved)["max_box_px"] == pytest.approx(0.5) and not within_tolerance(
        compare_detections(a, moved))
    fewer = compare_detections(a, _instances([[0, 0, 10, 10]], [0.5], [0]))
    assert fewer["exported_detections"] == 1 and not within_tolerance(fewer)
    other_class = compare_detections(a, _instances([[0, 0, 10, 10], [50, 50, 90, 70]], [0.5, 0.5], [0, 1]))
    assert other_class["max_box_px"] == float("inf") and not within_tolerance(other_class)
    nan = float("nan")
    b1 = _instances([[0, 0, 10, 10]], [0.5], [0], [[nan, 2, nan, 8]])
    b2 = _instances([[0, 0, 10, 10]], [0.5], [0], [[nan, 2.001, nan, 8]])
    assert compare_detections(b1, b2)["max_border_px"] == pytest.approx(0.001, abs=1e-5)  # NaN = NaN (no x votes)
    b3 = _instances([[0, 0, 10, 10]], [0.5], [0], [[1, 2, nan, 8]])
    assert not within_tolerance(compare_detections(b1, b3))
    assert compare_detections(_instances([], [], []), _instances([], [], []))["max_box_px"] == 0.0
    # one low-ranked detection replaced (another proposal chosen at the RPN's boundary): strict fails, 0.8 passes
    boxes = [[10 * i, 0, 10 * i + 8, 5] for i in range(5)]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    eager = _instances(boxes, scores, [0] * 5)
    flipped = _instances(boxes[:3] + [[100, 50, 140, 60]] + boxes[4:], scores, [0] * 5)
    diff = compare_detections(eager, flipped)
    assert diff["matched"] == 4 and [u["rank"] for u in diff["unmatched"]] == [3]
    assert diff["unmatched"][0]["score"] == pytest.approx(0.6) and diff["max_box_px"] > 50
    assert not within_tolerance(diff) and within_tolerance(diff, min_matched=0.8)
    assert not within_tolerance(diff, min_matched=0.9)
    best_moved = compare_detections(eager, _instances([[1, 0, 9, 5]] + boxes[1:], scores, [0] * 5))
    assert best_moved["matched"] == 4 and not within_tolerance(best_moved, min_matched=0.5)


def test_check_exportable_names_the_key():
    load = lambda name, *opts: cli.load_config(os.path.join(REPO, "configs", name), list(opts))  # noqa: E731
    check_exportable(load("nt_voting_bv.yaml"))
    with pytest.raises(ValueError, match="MODEL.EXPLAIN.ENABLED"):
        check_exportable(load("nt_voting.yaml", "MODEL.EXPLAIN.ENABLED", "True"))
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE.*tools/deploy/export_model.py"):
        check_exportable(load("nt_fpn_R18.yaml"))
    with pytest.raises(ValueError, match="DEFORM_ON_PER_STAGE"):
        check_exportable(load("nt_ls.yaml", "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, False, False]"))


# ------------------------------------------------------------------ the tool

@pytest.fixture(scope="module")
def tiny_proposed(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("tool_model")), "proposed")


@pytest.mark.slow
def test_export_tool_writes_checked_files_and_replaces_them_only_when_asked(tiny_proposed, test_images, tmp_path,
                                                                            capsys):
    config, weights = tiny_proposed
    sample = tmp_path / "sample.png"
    cv2.imwrite(str(sample), next(iter(test_images.values())))
    out = tmp_path / "export"
    code, stdout, err = run_tool(capsys, "--config-file", config, "--output", out, "--sample-image", sample,
                                 "MODEL.WEIGHTS", weights)
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["export.json", "model.onnx", "model.ts"]  # no staging folder left
    meta = json.loads((out / "export.json").read_text())
    assert meta["outputs"] == ["boxes", "scores", "classes"] and meta["input"]["traced_size"] == [128, 171]
    checks = meta["check_against_eager"]
    assert checks["tolerance"] == {"box_px": BOX_TOLERANCE_PX, "score": SCORE_TOLERANCE, "min_matched": 1.0}
    for fmt in FORMATS:
        assert set(checks[fmt]) == {"sample 144x192", "crop 144x144"}
        for diff in checks[fmt].values():
            assert diff["eager_detections"] == diff["exported_detections"] == diff["matched"] > 0
            assert diff["max_box_px"] <= BOX_TOLERANCE_PX and diff["max_score"] <= SCORE_TOLERANCE
        assert f"{fmt} vs eager, sample 144x192" in stdout and f"{fmt} vs eager, crop 144x144" in stdout
    # the written files are the ones checked: they reproduce the eager model on a test image
    eager = build_predictor(cli.load_config(config, ["MODEL.WEIGHTS", weights]))
    image = test_images["portrait crop"]
    assert within_tolerance(compare_detections(eager(image)["instances"],
                                               ExportedModel.load(str(out), "onnx")(image)["instances"]))
    # existing files are kept without --overwrite (exit 2, the file named), replaced with it
    before = {n: os.path.getmtime(out / n) for n in os.listdir(out)}
    code, _, err = run_tool(capsys, "--config-file", config, "--output", out, "--format", "torchscript",
                            "MODEL.WEIGHTS", weights)
    assert code == cli.EXIT_USER_ERROR and "model.ts" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert {n: os.path.getmtime(out / n) for n in os.listdir(out)} == before
    code, stdout, err = run_tool(capsys, "--config-file", config, "--output", out, "--format", "torchscript",
                                 "--overwrite", "MODEL.WEIGHTS", weights)
    assert code == 0, err
    assert os.path.getmtime(out / "model.ts") > before["model.ts"]
    assert "torchscript vs eager, sample 576x768" in stdout  # the default sample: a synthetic NT image
    assert "onnx vs eager" not in stdout


@pytest.mark.slow
def test_export_tool_refuses_files_that_differ_from_the_eager_model(tiny_proposed, tmp_path, capsys, monkeypatch):
    """An exported model whose boxes are 0.5 px off is caught: exit 1, nothing written."""
    import voting_det.export as export

    config, weights = tiny_proposed
    call = export.ExportedModel.__call__

    def off_by_half_a_pixel(self, image):
        out = call(self, image)
        out["instances"].pred_boxes.tensor[:, 0] += 0.5
        return out

    monkeypatch.setattr(export.ExportedModel, "__call__", off_by_half_a_pixel)
    out = tmp_path / "export"
    code, _, err = run_tool(capsys, "--config-file", config, "--output", out, "--format", "onnx",
                            "MODEL.WEIGHTS", weights)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error: onnx on the sample; onnx on the crop:")
    assert "nothing written" in err and not out.exists()


def test_export_tool_user_errors_name_the_file_or_key(tiny_proposed, tmp_path, capsys):
    config, weights = tiny_proposed
    out = tmp_path / "export"
    cases = [
        (["--config-file", tmp_path / "nope.yaml", "--output", out], ["--config-file", "nope.yaml", "not found"]),
        (["--config-file", config, "--output", out, "MODEL.WEIGHTS", tmp_path / "missing.pth"],
         ["MODEL.WEIGHTS", "missing.pth", "not found"]),
        (["--config-file", config, "--output", out], ["MODEL.WEIGHTS is empty"]),
        (["--config-file", config, "--output", out, "--sample-image", tmp_path / "no.png", "MODEL.WEIGHTS", weights],
         ["--sample-image", "no.png", "not found"]),
        (["--config-file", config, "--output", out, "MODEL.WEIGHTS", weights, "MODEL.EXPLAIN.ENABLED", "True"],
         ["MODEL.EXPLAIN.ENABLED", "not exported"]),
        (["--config-file", config, "--output", out, "--format", "caffe2", "MODEL.WEIGHTS", weights], ["--format"]),
        (["--config-file", config, "--output", out, "--box-tolerance", "-1", "MODEL.WEIGHTS", weights],
         ["--box-tolerance"]),
        (["--config-file", config, "--output", out, "--min-matched", "0", "MODEL.WEIGHTS", weights],
         ["--min-matched"]),
    ]
    for argv, named in cases:
        code, _, err = run_tool(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == cli.EXIT_USER_ERROR and len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert all(str(n) in lines[0] for n in named), (named, lines[0])
        assert not out.exists()
    afile = tmp_path / "a_file"
    afile.write_text("x")
    code, _, err = run_tool(capsys, "--config-file", config, "--output", afile, "MODEL.WEIGHTS", weights)
    assert code == cli.EXIT_USER_ERROR and "is a file" in err and afile.read_text() == "x"


@pytest.mark.slow
def test_export_tool_as_a_process_exits_2_naming_missing_weights(tmp_path):
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "export_model.py"), "--config-file",
                           os.path.join(REPO, "configs", "nt_voting.yaml"), "--output", str(out),
                           "MODEL.WEIGHTS", str(tmp_path / "gone.pth")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: config key MODEL.WEIGHTS: {tmp_path / 'gone.pth'} not found; "
                                                "give the model_final.pth of a trained model"]
    assert not out.exists()
