"""Speed and size measurements of detectors built from configs (issue 6,
``tools/benchmark_speed.py``).

All timings that are compared are taken in one process, with the models
interleaved (every repetition runs each model once, in a rotating order), so a
machine that slows down or speeds up during the run moves all models alike and
the ratios hold. Peak memory is the exception: RSS only grows inside a process,
so each model gets its own subprocess (:func:`measure_memory_in_subprocess`).
"""
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "ComponentTimer",
    "HEAD_PREFIX",
    "build_model_from_config",
    "count_flops",
    "fit_line",
    "inference_runner",
    "make_inputs",
    "matmul_peak_gflops",
    "measure_memory_in_subprocess",
    "summarise_times",
    "time_interleaved",
    "timed_components",
    "train_step_runner",
]


def build_model_from_config(config_file: str, opts: Sequence[str] = (), device: str = "cpu", seed: int = 0):
    """detectron2's ``build_model`` on a voting_det / detectron2 config
    (:func:`voting_det.config.setup_cfg`, as ``tools/train_net.py`` builds it),
    weights drawn with ``seed``. Returns ``(model, cfg)``; the model is in eval mode."""
    from detectron2.modeling import build_model

    from voting_det.config import setup_cfg

    cfg = setup_cfg(config_file, list(opts) + ["MODEL.DEVICE", device])
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.eval()
    return model, cfg


def make_inputs(height: int, width: int, batch: int = 1, seed: int = 0, with_box: bool = False, device: str = "cpu"):
    """``batch`` detectron2 input dicts: a uint8 3-channel image of uniform
    noise (timings do not depend on the pixels: proposal counts are fixed by
    the config), ``height``/``width`` = the image size (so no resize happens),
    and with ``with_box`` one ground-truth box (a wide thin NT-like box) for a
    training step."""
    from detectron2.structures import Boxes, Instances

    rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(batch):
        image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8)).to(device)
        item = {"image": image, "height": height, "width": width}
        if with_box:
            inst = Instances((height, width))
            x0, y0 = 0.3 * width, 0.6 * height
            inst.gt_boxes = Boxes(torch.tensor([[x0, y0, x0 + 0.35 * width, y0 + 0.06 * height]], device=device))
            inst.gt_classes = torch.zeros(1, dtype=torch.int64, device=device)
            item["instances"] = inst
        inputs.append(item)
    return inputs


def summarise_times(times: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles (numpy's linear percentiles), min and count of a list
    of seconds, returned in milliseconds."""
    t = np.asarray(times, dtype=float) * 1e3
    if t.size == 0:
        raise ValueError("no timings to summarise")
    q1, med, q3 = np.percentile(t, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3), "min_ms": float(t.min()), "n": int(t.size)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    runners: Dict[str, Callable[[], object]],
    warmup: int,
    reps: int,
    device: str = "cpu",
    on_round: Optional[Callable[[int], None]] = None,
) -> Dict[str, List[float]]:
    """Seconds per call of every runner, interleaved.

    ``warmup`` untimed calls each, then ``reps`` rounds; in round ``i`` the
    runners are called in the order rotated by ``i`` (so none is always first
    after another's cache-thrashing). Returns name -> list of ``reps`` seconds.
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    _sync(device)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for i in range(reps):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            start = time.perf_counter()
            runners[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
        if on_round is not None:
            on_round(i)
    return times


# Component names of timed_components() that count as detection heads.
HEAD_PREFIX = "head: "


def inference_runner(model: nn.Module, inputs, device: str = "cpu") -> Tuple[Callable[[], object], "ComponentTimer"]:
    """A closure running one ``torch.inference_mode`` call of ``model`` on
    ``inputs`` and starting a new :class:`ComponentTimer` record each time,
    and that timer (over :func:`timed_components`)."""
    timer = ComponentTimer(timed_components(model), device)

    def run():
        timer.new_record()
        with torch.inference_mode():
            return model(inputs)

    return run, timer


class ComponentTimer:
    """Wall time of named submodules' forwards, through forward hooks.

    Each call of a component adds its duration to the current record; a
    component called several times per image (the voting stages, once per
    level) is summed. :meth:`new_record` starts the next model call. Nested
    components are fine (each is timed on its own)."""

    def __init__(self, components: Dict[str, nn.Module], device: str = "cpu"):
        self.records: List[Dict[str, float]] = []
        self._starts: Dict[int, List[float]] = {}
        self._handles = []
        self.device = device
        for name, module in components.items():
            self._handles.append(module.register_forward_pre_hook(self._pre))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, module, inputs):
        _sync(self.device)
        self._starts.setdefault(id(module), []).append(time.perf_counter())

    def _post(self, name):
        def hook(module, inputs, output):
            _sync(self.device)
            elapsed = time.perf_counter() - self._starts[id(module)].pop()
            if self.records:
                self.records[-1][name] = self.records[-1].get(name, 0.0) + elapsed
        return hook

    def new_record(self) -> None:
        self.records.append({})

    def heads(self, last: int) -> List[float]:
        """Seconds in the components named ``head: ...`` (the detection heads),
        per record, of the ``last`` records."""
        return [sum(v for k, v in r.items() if k.startswith(HEAD_PREFIX)) for r in self.records[-last:]]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def timed_components(model: nn.Module) -> Dict[str, nn.Module]:
    """The parts whose time :class:`ComponentTimer` reports for a model:
    backbone(s), proposal generator, and the heads (each voting level and the
    context head of a VotingRCNN; the ROI heads of detectron2's models)."""
    parts: Dict[str, nn.Module] = {"backbone": model.backbone, "rpn": model.proposal_generator}
    levels = getattr(model.roi_heads, "levels", None)
    if isinstance(levels, nn.ModuleList):  # VotingROIHeads: one module per voting level, named by its feature map
        for level in levels:
            parts[f"{HEAD_PREFIX}local {level.name}"] = level
    else:
        parts[f"{HEAD_PREFIX}roi_heads"] = model.roi_heads
    context_head = getattr(model.roi_heads, "context_head", None)
    if context_head is not None:
        if getattr(model, "context_backbone", None) is not None:  # none with MODEL.CONTEXT.SHARE_BACKBONE
            parts["context backbone"] = model.context_backbone
        parts[f"{HEAD_PREFIX}context"] = context_head
    return parts


def train_step_runner(model: nn.Module, inputs, lr: float = 1e-4) -> Callable[[], float]:
    """A closure doing one training iteration (forward, backward, Adam step)
    of ``model`` on ``inputs``; returns the loss. Puts the model in train mode."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)

    from detectron2.utils.events import EventStorage

    storage = EventStorage(0)

    def step() -> float:
        with storage:  # detectron2's losses log to the current storage
            losses = model(inputs)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def count_flops(model: nn.Module, inputs) -> Tuple[float, Dict[str, int]]:
    """FLOPs of one inference call by fvcore's ``FlopCountAnalysis`` (through
    detectron2's tracing adapter). fvcore counts one fused multiply-add as one
    flop; returned as GFLOP with the same convention, plus the operators it
    could not count (name -> calls)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    analysis = FlopCountAnalysis(model, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    total = analysis.total() / 1e9
    return total, dict(analysis.unsupported_ops())


def matmul_peak_gflops(size: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """This machine's float32 matrix-multiply rate (GFLOP/s as multiply-adds,
    fvcore's convention): the best of ``reps`` products of two ``size`` square
    matrices with the current thread count. The physical ceiling the models'
    achieved rate is compared with."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return size**3 / best / 1e9


def fit_line(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    """Least-squares line ``y = slope x + intercept`` with its R^2, and the
    ratio of the last segment's slope to the first's (about 1 for linear
    growth, well above 1 for super-linear)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError("fitting a line needs at least two distinct x values")
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual**2) / total) if total > 0 else 1.0
    order = np.argsort(x)
    xs, ys = x[order], y[order]
    first = (ys[1] - ys[0]) / (xs[1] - xs[0])
    last = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2,
            "last_over_first_segment_slope": float(last / first) if first != 0 else float("nan")}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the
    # parent through fork and exec, so a child would report the parent's peak.
    return _status_mb("VmHWM")


def memory_child(config_file: str, opts: Sequence[str], height: int, width: int, reps: int, threads: int,
                 device: str = "cpu") -> dict:
    """Run in a fresh process: build the model, then ``reps`` inference calls;
    RSS after building and the peak RSS of the process (MiB), and on CUDA the
    peak of allocated GPU memory."""
    torch.set_num_threads(threads)
    model, _ = build_model_from_config(config_file, opts, device)
    inputs = make_inputs(height, width, device=device)
    after_build = _rss_mb()
    peak_before = _peak_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for _ in range(reps):
            model(inputs)
    peak = _peak_rss_mb()
    out = {"rss_after_build_mb": after_build, "peak_rss_mb": peak, "peak_rss_before_inference_mb": peak_before,
           "inference_increase_mb": peak - after_build}
    if device.startswith("cuda"):
        out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_memory_in_subprocess(config_file: str, opts: Sequence[str], height: int, width: int,
                                 reps: int = 3, threads: int = 2, device: str = "cpu", timeout: float = 900) -> dict:
    """:func:`memory_child` in its own Python process (RSS only grows within a
    process, so models measured in one process would hide each other's peak)."""
    payload = json.dumps({"config_file": config_file, "opts": list(opts), "height": height, "width": width,
                          "reps": reps, "threads": threads, "device": device})
    code = ("import json, sys; from benchmarks.speed import memory_child; "
            "print('RESULT ' + json.dumps(memory_child(**json.loads(sys.argv[1]))))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code, payload], capture_output=True, text=True, timeout=timeout,
                          env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"memory measurement of {config_file} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
