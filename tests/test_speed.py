"""Speed work must not change results (issue 6): the fused vote against the
per-primitive reference at the model's real sizes, the cached vote operator,
the channels-last stem; and the measuring tools against numpy."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from benchmarks.speed import (
    ComponentTimer,
    build_model_from_config,
    fit_line,
    make_inputs,
    measure_memory_in_subprocess,
    summarise_times,
    time_interleaved,
    train_step_runner,
)
from voting_det.modeling.primitives import PrimitiveVoting
from voting_det.modeling.voting import spatial_templates, vote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a small Proposed: 160x224 inputs, few proposals, both levels and the context branch
SMALL = ("MODEL.RPN.POST_NMS_TOPK_TEST", "20", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", "20", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16")


# ------------------------------------------------------------ fused vote == per-primitive reference
@pytest.mark.parametrize("grid", [(6, 24), (8, 32)])
def test_fused_vote_equals_per_primitive_convolution_at_model_sizes(grid):
    """Eq. 2 as one matrix product over all K = 128 primitives (the default
    full-size kernels 2M-1 x 2N-1) equals the mean of K separate 2-D
    convolutions computed by scipy, in float32 as the model runs."""
    g = torch.Generator().manual_seed(0)
    m, n = grid
    k = 128
    Rs = torch.rand(2, k, m, n, generator=g).clamp_min(0.3) - 0.3  # sparse-ish, like clipped cosines
    D = spatial_templates(torch.randn(k, 2 * m - 1, 2 * n - 1, generator=g))
    Phi = vote(Rs, D)
    for r in range(2):
        expected = np.mean([convolve2d(Rs[r, j].double().numpy(), D[j].double().numpy(), mode="same")
                            for j in range(k)], axis=0)
        np.testing.assert_allclose(Phi[r].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_cached_vote_operator_matches_a_fresh_one_and_follows_parameter_changes():
    torch.manual_seed(0)
    module = PrimitiveVoting(16, 8, (6, 24)).eval()
    gamma = torch.randn(3, 16, 6, 24)
    with torch.no_grad():
        reference = module(gamma)["vote_heatmap"]
        cached = module(gamma)["vote_heatmap"]  # second call reuses the operator
    assert torch.equal(reference, cached)
    with torch.no_grad():  # an optimizer step changes the logits in place
        module.spatial_template_logits.add_(torch.randn_like(module.spatial_template_logits))
        after_step = module(gamma)["vote_heatmap"]
        D = module.spatial_templates()
    Rs = module(gamma)["response_maps"].detach()
    assert not torch.allclose(after_step, reference)
    torch.testing.assert_close(after_step, vote(Rs, D))
    other = PrimitiveVoting(16, 8, (6, 24)).eval()
    other.load_state_dict(module.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(other(gamma)["vote_heatmap"], after_step)
    module.load_state_dict(PrimitiveVoting(16, 8, (6, 24)).state_dict())  # a checkpoint load
    with torch.no_grad():
        loaded = module(gamma)
    torch.testing.assert_close(loaded["vote_heatmap"], vote(loaded["response_maps"], module.spatial_templates()))


def test_gradients_still_reach_the_spatial_templates_after_cached_inference():
    """The cache is bypassed whenever a gradient is recorded, and the vote index
    first built under inference mode can still be saved for backward."""
    torch.manual_seed(0)
    module = PrimitiveVoting(8, 4, (5, 7))
    gamma = torch.randn(2, 8, 5, 7)
    with torch.inference_mode():
        module(gamma)
    out = module(gamma)
    out["centre_cells"].sum().backward()
    assert module.spatial_template_logits.grad is not None
    assert module.spatial_template_logits.grad.abs().sum() > 0


# ------------------------------------------------------------ whole model: optimisations keep the numbers
def _proposed(opts=()):
    return build_model_from_config(os.path.join(ROOT, "configs/nt_voting.yaml"), SMALL + tuple(opts))[0]


def test_channels_last_stem_gives_the_same_detections():
    inputs = make_inputs(160, 224, seed=3)
    fast = _proposed(("MODEL.VOTING.CHANNELS_LAST_STEM", "True"))
    plain = _proposed(("MODEL.VOTING.CHANNELS_LAST_STEM", "False"))
    plain.load_state_dict(fast.state_dict())
    assert fast.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a, b = fast(inputs)[0]["instances"], plain(inputs)[0]["instances"]
        fa = fast.backbone(fast.preprocess_image(inputs).tensor)
        fb = plain.backbone(plain.preprocess_image(inputs).tensor)
    for level in fa:
        assert fa[level].is_contiguous()
        torch.testing.assert_close(fa[level], fb[level], rtol=1e-4, atol=1e-4)
    assert len(a) == len(b)
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-3, atol=1e-4)


def test_training_step_after_inference_works_and_checkpoint_keys_are_unchanged():
    model = _proposed()
    keys = set(model.state_dict())
    assert "backbone.stem.conv1.weight" in keys and "context_backbone.stem.conv1.weight" in keys
    with torch.inference_mode():
        model(make_inputs(160, 224))
    step = train_step_runner(model, make_inputs(160, 224, batch=2, with_box=True))
    assert np.isfinite(step())
    assert set(model.state_dict()) == keys


# ------------------------------------------------------------ the measuring tools
def test_summarise_times_matches_numpy_percentiles():
    times = [0.3, 0.1, 0.2, 0.5, 0.4]
    s = summarise_times(times)
    assert s["median_ms"] == pytest.approx(300.0)
    assert s["q1_ms"] == pytest.approx(np.percentile(np.array(times) * 1e3, 25))
    assert s["q3_ms"] == pytest.approx(np.percentile(np.array(times) * 1e3, 75))
    assert s["min_ms"] == pytest.approx(100.0) and s["n"] == 5
    with pytest.raises(ValueError):
        summarise_times([])


def test_fit_line_against_polyfit_and_flags_superlinear_growth():
    x = [50, 100, 200, 400]
    linear = [10 + 0.5 * v for v in x]
    f = fit_line(x, linear)
    slope, intercept = np.polyfit(x, linear, 1)
    assert f["slope"] == pytest.approx(slope) and f["intercept"] == pytest.approx(intercept)
    assert f["r2"] == pytest.approx(1.0) and f["last_over_first_segment_slope"] == pytest.approx(1.0)
    quadratic = [v * v / 100 for v in x]
    q = fit_line(x, quadratic)
    assert q["r2"] < 0.99 and q["last_over_first_segment_slope"] == pytest.approx((1600 - 400) / 200 / ((100 - 25) / 50))
    with pytest.raises(ValueError):
        fit_line([1, 1], [2, 3])


def test_time_interleaved_rotates_the_order_and_times_every_repetition():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_interleaved(runners, warmup=1, reps=3)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t) == 3 for t in times.values())


def test_component_timer_sums_repeated_calls_per_record():
    lin = torch.nn.Linear(4, 4)
    timer = ComponentTimer({"lin": lin})
    timer.new_record()
    lin(torch.ones(1, 4))
    lin(torch.ones(1, 4))
    timer.new_record()
    assert timer.records[0]["lin"] > 0 and timer.records[1] == {}
    timer.remove()
    lin(torch.ones(1, 4))
    assert timer.records[1] == {}


@pytest.mark.slow
def test_memory_is_measured_in_its_own_process():
    m = measure_memory_in_subprocess(os.path.join(ROOT, "configs/nt_ls.yaml"), SMALL, 96, 128, reps=1, threads=1)
    assert m["peak_rss_mb"] >= m["rss_after_build_mb"] > 50
    assert m["inference_increase_mb"] == pytest.approx(m["peak_rss_mb"] - m["rss_after_build_mb"])


@pytest.mark.slow
def test_benchmark_speed_cli_writes_its_table(tmp_path):
    out = tmp_path / "speed"
    cmd = [sys.executable, os.path.join(ROOT, "tools/benchmark_speed.py"), "--methods", "ls", "proposed", "fpn_R50",
           "--sizes", "96x128", "--reps", "1", "--warmup", "0", "--train-reps", "1", "--scaling-reps", "0",
           "--no-memory", "--no-flops", "--accuracy", "", "--opts", *SMALL, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    report = json.loads((out / "speed.json").read_text())
    rows = report["inference"]["96x128"]
    assert set(rows) == {"ls", "proposed", "proposed_explain", "fpn_R50"}
    assert rows["fpn_R50"]["ratio_to_fpn_R50"] == pytest.approx(1.0)
    assert 0 < rows["proposed"]["heads_fraction"] < 1
    assert {"head: local res4", "head: local res3", "head: context"} <= set(rows["proposed"]["components"])
    assert set(report["training"]["96x128"]) == {"ls", "proposed", "fpn_R50"}
    md = (out / "speed.md").read_text()
    assert "| proposed |" in md and "Training iteration" in md


@pytest.mark.slow
def test_benchmark_speed_times_the_exported_models_beside_eager(tmp_path):
    """--exported: voting_det's models (detectron2's left out) eager, as TorchScript and in ONNX Runtime,
    interleaved; the ratios are the per-repetition ratios' median, the exported outputs equal eager's."""
    import json

    out = tmp_path / "speed"
    cmd = [sys.executable, os.path.join(ROOT, "tools/benchmark_speed.py"), "--exported", "--methods", "ls", "fpn_R50",
           "--sizes", "96x128", "--reps", "3", "--warmup", "1", "--threads", "1",
           "--opts", *SMALL, "MODEL.VOTING.NUM_PRIMITIVES", "8", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fpn_R50 left out" in proc.stdout
    report = json.loads((out / "export_cpu.json").read_text())
    assert report["threads"] == 1 and list(report["exported"]) == ["96x128"]
    rows = report["exported"]["96x128"]
    assert list(rows) == ["ls"]
    r = rows["ls"]
    times = {k: np.asarray(v) for k, v in r["times_ms"].items()}
    assert set(times) == {"eager", "torchscript", "onnxruntime"} and all(len(t) == 3 and (t > 0).all()
                                                                          for t in times.values())
    for runtime in ("torchscript", "onnxruntime"):
        assert r["time"][runtime]["median_ms"] == pytest.approx(np.median(times[runtime]))
        assert r["ratio_to_eager"][runtime]["median"] == pytest.approx(np.median(times[runtime] / times["eager"]))
        diff = r["difference_to_eager"][runtime]
        assert diff["eager_detections"] == diff["exported_detections"] > 0
        assert diff["max_box_px"] <= 0.01 and diff["max_score"] <= 1e-4
    assert r["file_mb"]["onnx"] > 1 and r["file_mb"]["torchscript"] > 1
    md = (out / "export_cpu.md").read_text()
    assert "| ls |" in md and "ONNX Runtime / eager" in md
