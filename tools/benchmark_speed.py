#!/usr/bin/env python
"""Speed, memory, size and FLOPs of voting_det's models next to detectron2's
own detectors, measured side by side in one process (issue 6).

    .venv/bin/python tools/benchmark_speed.py --out benchmarks/results/speed_cpu

Every model is built from the config of its Table 1 row (same test proposal
count, detections per image and score threshold as the accuracy runs), with
untrained weights (seed 0): the work a detector does at test time does not
depend on its weights once the number of proposals is fixed (100 here, as in
the accuracy runs). Inference: ``torch.inference_mode``, batch 1, the image
fed at the timed size (no resize), models interleaved in every repetition so
that the ratios hold on a noisy machine. Peak memory: one subprocess per model.
Writes ``speed.json`` and ``speed.md`` to ``--out``.

With ``--exported`` it times, instead, voting_det's models of ``--methods``
(detectron2's baselines are left out) eager, as TorchScript and in ONNX
Runtime on the CPU, interleaved in one run: each model is exported as
``tools/export_model.py`` exports it (voting_det.export, traced at each
``--sizes``), and the ratios of the exported models' latency to the eager
model's are taken per repetition; writes ``export_cpu.json`` and
``export_cpu.md`` (docs/export.md). Exit status: 0 when written; 2 for a
user error (one line, found before any timing).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.runner import METHODS, TABLE1, git_commit, machine_info, repo_root  # noqa: E402
from benchmarks.speed import (  # noqa: E402
    HEAD_PREFIX,
    build_model_from_config,
    count_flops,
    fit_line,
    inference_runner,
    make_inputs,
    matmul_peak_gflops,
    measure_memory_in_subprocess,
    summarise_times,
    time_interleaved,
    train_step_runner,
)
from voting_det import cli  # noqa: E402

REFERENCE = "fpn_R50"
PROPOSED = "proposed"
EXPLAIN = "proposed_explain"
EXPLAIN_OPTS = ("MODEL.EXPLAIN.ENABLED", "True")
PROPOSAL_COUNTS = (50, 100, 200, 400)
PRIMITIVE_COUNTS = (32, 64, 128, 256)


def build_parser():
    p = argparse.ArgumentParser(prog="tools/benchmark_speed.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(TABLE1), choices=sorted(METHODS),
                   help="Table 1 rows to time (default: all of them)")
    p.add_argument("--sizes", nargs="+", default=["576x768", "480x683"],
                   help="HxW image sizes to time at; 576x768 is the paper's (gpu profile), 480x683 the cpu "
                        "profile's (the real set's 450x640 images at short edge 480)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=12, help="timed repetitions per model (interleaved)")
    p.add_argument("--train-reps", type=int, default=4, help="timed training iterations per model (0: skip)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--scaling-reps", type=int, default=8, help="repetitions per point of the scaling fits (0: skip)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-model peak-memory subprocesses")
    p.add_argument("--no-flops", action="store_true", help="skip fvcore's FLOP count")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides applied to every model")
    p.add_argument("--accuracy", default="benchmarks/results/table1_cpu_real/table.csv",
                   help="Table 1 CSV whose top-1 / AUC are shown beside the times ('' to leave out)")
    p.add_argument("--profile", action="store_true",
                   help="also write torch.profiler's operator table of Proposed (first size) to profile_proposed.txt")
    p.add_argument("--only-profile", action="store_true", help="write the profile and stop (no timings)")
    p.add_argument("--exported", action="store_true",
                   help="instead: time voting_det's models of --methods eager, as TorchScript and in ONNX Runtime "
                        "(CPU), interleaved, as ratios to eager; writes export_cpu.json and export_cpu.md")
    p.add_argument("--out", required=True, help="output folder for speed.json and speed.md")
    return p


def parse_args(argv=None):
    return cli.parse_args(build_parser(), argv)


def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise cli.UserError(f"--sizes {text}: not HxW; give e.g. 576x768") from None
    return h, w


def _model_spec(name, extra=()):
    if name == EXPLAIN:
        m = METHODS[PROPOSED]
        return m.config, tuple(m.opts) + EXPLAIN_OPTS + tuple(extra)
    m = METHODS[name]
    return m.config, tuple(m.opts) + tuple(extra)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def time_inference(names, size, args, log):
    """Interleaved inference timings with per-component times."""
    h, w = size
    inputs = make_inputs(h, w, device=args.device)
    runners, timers, models = {}, {}, {}
    for name in names:
        config, opts = _model_spec(name, args.opts)
        model, _ = build_model_from_config(config, opts, args.device)
        models[name] = model
        runners[name], timers[name] = inference_runner(model, inputs, args.device)
    times = time_interleaved(runners, args.warmup, args.reps, args.device,
                             on_round=lambda i: log(f"  {h}x{w}: round {i + 1}/{args.reps}"))
    result = {}
    for name in names:
        records = timers[name].records[-args.reps:]
        total = times[name]
        parts = {k: summarise_times([r.get(k, 0.0) for r in records]) for k in records[0]}
        heads = timers[name].heads(args.reps)
        result[name] = {
            "time": summarise_times(total),
            "images_per_s": 1.0 / float(np.median(total)),
            "components": parts,
            "heads_fraction": float(np.median([hd / t for hd, t in zip(heads, total)])),
            "parameters": _params(models[name]),
        }
        timers[name].remove()
    if REFERENCE in times:
        for name, r in result.items():
            # per repetition (the same round), so the spread is that of the ratio itself
            ratios = np.asarray(times[name]) / np.asarray(times[REFERENCE])
            q1, med, q3 = np.percentile(ratios, [25, 50, 75])
            r["ratio_to_fpn_R50"] = float(med)
            r["ratio_to_fpn_R50_q1_q3"] = [float(q1), float(q3)]
    return result, models, inputs


def flops_of(models, inputs, log):
    out = {}
    for name, model in models.items():
        try:
            total, unsupported = count_flops(model, inputs)
            out[name] = {"gflops": total, "uncounted_ops": unsupported}
        except Exception as e:  # a model fvcore cannot trace is reported, not fatal
            out[name] = {"gflops": None, "error": f"{type(e).__name__}: {e}"[:300]}
        log(f"  flops {name}: {out[name].get('gflops')}")
    return out


def time_training(names, size, args, log):
    h, w = size
    inputs = make_inputs(h, w, batch=args.train_batch, with_box=True, device=args.device)
    runners = {}
    for name in names:
        if name == EXPLAIN:
            continue
        config, opts = _model_spec(name, args.opts)
        model, _ = build_model_from_config(config, opts, args.device)
        runners[name] = train_step_runner(model, inputs)
    times = time_interleaved(runners, 1, args.train_reps, args.device,
                             on_round=lambda i: log(f"  training {h}x{w}: round {i + 1}/{args.train_reps}"))
    ref = times.get(REFERENCE)
    out = {}
    for name, t in times.items():
        out[name] = {"time": summarise_times(t)}
        if ref:
            out[name]["ratio_to_fpn_R50"] = float(np.median(t) / np.median(ref))
    return out


def time_scaling(size, args, log):
    """Proposed's inference time against the test proposal count and K."""
    h, w = size
    inputs = make_inputs(h, w, device=args.device)
    series = {"proposals": ("MODEL.RPN.POST_NMS_TOPK_TEST", PROPOSAL_COUNTS),
              "primitives": ("MODEL.VOTING.NUM_PRIMITIVES", PRIMITIVE_COUNTS)}
    out = {}
    for label, (key, values) in series.items():
        runners, counted, timers = {}, {}, {}
        for value in values:
            config, opts = _model_spec(PROPOSED, tuple(args.opts) + (key, str(value)))
            if key == "MODEL.RPN.POST_NMS_TOPK_TEST":
                opts += ("MODEL.RPN.PRE_NMS_TOPK_TEST", str(max(1000, 4 * value)))
            model, _ = build_model_from_config(config, opts, args.device)
            runners[value], timers[value] = inference_runner(model, inputs, args.device)

            def count(module, inp, output, value=value):
                counted[value] = sum(len(p) for p in output[0])

            model.proposal_generator.register_forward_hook(count)
        times = time_interleaved(runners, 1, args.scaling_reps, args.device,
                                 on_round=lambda i: log(f"  scaling ({label}) round {i + 1}/{args.scaling_reps}"))
        xs = [counted[v] if label == "proposals" else v for v in values]
        total = [float(np.median(times[v]) * 1e3) for v in values]
        heads = [float(np.median(timers[v].heads(args.scaling_reps)) * 1e3) for v in values]
        out[label] = {"config_key": key, "values": list(values), "x": xs, "total_ms": total, "heads_ms": heads,
                      "fit_total": fit_line(xs, total), "fit_heads": fit_line(xs, heads)}
    return out


def write_profile(size, args, path, reps=3, rows=30):
    """torch.profiler's operator table (self CPU time) of ``reps`` Proposed inferences."""
    from torch.profiler import ProfilerActivity, profile

    h, w = size
    config, opts = _model_spec(PROPOSED, args.opts)
    model, _ = build_model_from_config(config, opts, args.device)
    inputs = make_inputs(h, w, device=args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with torch.inference_mode():
        for _ in range(args.warmup + 1):
            model(inputs)
        with profile(activities=activities) as prof:
            for _ in range(reps):
                model(inputs)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)
    with open(path, "w") as f:
        f.write(f"# torch.profiler, Proposed (configs/nt_voting.yaml), {reps} inferences at {h}x{w}, batch 1, "
                f"{torch.get_num_threads()} threads, commit {git_commit(repo_root())[:10]}, {time.strftime('%Y-%m-%d %H:%M')}\n")
        f.write(f"# command: python {' '.join([os.path.relpath(sys.argv[0], repo_root())] + sys.argv[1:])}\n")
        f.write(table + "\n")


def read_accuracy(path):
    if not path or not os.path.exists(path):
        return {}
    import csv

    out = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            out[row["method"]] = {"folds": row["folds"], "top1": float(row["top1_acc_mean"]),
                                  "auc": float(row["paper_auc_mean"])}
    return out


def _fmt(v, digits=1):
    return "n/a" if v is None else f"{v:.{digits}f}"


def write_markdown(report, path):
    L = []
    m = report["machine"]
    L.append("# Speed: voting_det next to detectron2's own detectors\n")
    L.append(f"Command: `{report['command']}`  ")
    L.append(f"Commit {report['commit'][:10]}{'-dirty' if report['commit'].endswith('-dirty') else ''}, {report['date']}. Machine: {m['cpu']}, {m['cores']} cores, "
             f"{m['threads']} torch threads, torch {m['torch']}, device {m.get('gpu', m['device'])}. "
             f"float32 matrix-multiply peak measured in the same run: {report['matmul_peak_gflops']:.1f} GFLOP/s "
             f"(multiply-adds, fvcore's convention).\n")
    L.append("Untrained weights (seed 0), 100 test proposals and the test settings of the accuracy runs "
             "(configs/Base-NT-Common.yaml), batch 1, `torch.inference_mode`, models interleaved in every "
             f"repetition ({report['reps']} repetitions after {report['warmup']} warm-ups). Ratio to FPN R50: "
             "median and IQR of the per-repetition ratios (both models timed in the same round). Heads = the voting "
             "levels and the context head (the two backbones and the RPN excluded).\n")
    acc = report.get("accuracy", {})
    for size, res in report["inference"].items():
        L.append(f"## Inference at {size}\n")
        L.append("| model | ms / image (median) | IQR | images/s | ratio to FPN R50 (IQR) | heads share | "
                 "parameters | GFLOPs | achieved GFLOP/s | peak RSS MiB (+ over built model) | top-1 / AUC (Table 1) |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, r in res.items():
            t = r["time"]
            fl = report.get("flops", {}).get(size, {}).get(name, {})
            g = fl.get("gflops")
            achieved = g / (t["median_ms"] / 1e3) if g else None
            mem = report.get("memory", {}).get(size, {}).get(name)
            mem_s = f"{mem['peak_rss_mb']:.0f} (+{mem['inference_increase_mb']:.0f})" if mem else "n/a"
            ratio = r.get("ratio_to_fpn_R50")
            q = r.get("ratio_to_fpn_R50_q1_q3")
            ratio_s = f"{ratio:.2f} ({q[0]:.2f}-{q[1]:.2f})" if ratio is not None and q else _fmt(ratio, 2)
            a = acc.get(name)
            acc_s = f"{a['top1']:.1f} / {a['auc']:.1f} (folds {a['folds']})" if a else "-"
            heads = f"{100 * r['heads_fraction']:.0f}%" if any(k.startswith(HEAD_PREFIX) for k in r["components"]) else "-"
            L.append(f"| {name} | {t['median_ms']:.0f} | {t['q1_ms']:.0f}-{t['q3_ms']:.0f} | {r['images_per_s']:.2f} | "
                     f"{ratio_s} | {heads} | {r['parameters'] / 1e6:.1f} M | {_fmt(g)} | {_fmt(achieved)} | {mem_s} | {acc_s} |")
        L.append("")
        L.append("Per component (median ms):\n")
        for name, r in res.items():
            parts = ", ".join(f"{k} {v['median_ms']:.0f}" for k, v in r["components"].items())
            L.append(f"- {name}: {parts}")
        L.append("")
    if report.get("training"):
        for size, res in report["training"].items():
            L.append(f"## Training iteration at {size}, batch {report['train_batch']} (forward, backward, Adam step)\n")
            L.append("| model | s / iteration (median) | IQR | ratio to FPN R50 |")
            L.append("|---|---|---|---|")
            for name, r in res.items():
                t = r["time"]
                L.append(f"| {name} | {t['median_ms'] / 1e3:.2f} | {t['q1_ms'] / 1e3:.2f}-{t['q3_ms'] / 1e3:.2f} | "
                         f"{_fmt(r.get('ratio_to_fpn_R50'), 2)} |")
            L.append("")
    if report.get("scaling"):
        for size, res in report["scaling"].items():
            L.append(f"## Proposed: time against proposals and K at {size}\n")
            for label, s in res.items():
                L.append(f"{label} ({s['config_key']}): x = {s['x']}")
                L.append(f"- total ms: {[round(v) for v in s['total_ms']]}; heads ms: {[round(v) for v in s['heads_ms']]}")
                for which in ("total", "heads"):
                    f = s[f"fit_{which}"]
                    L.append(f"- {which}: slope {f['slope']:.3f} ms per unit, intercept {f['intercept']:.0f} ms, "
                             f"R^2 {f['r2']:.3f}, last/first segment slope {f['last_over_first_segment_slope']:.2f}")
                L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


# ------------------------------------------------------------------ --exported

EXPORTED_RUNTIMES = ("eager", "torchscript", "onnxruntime")


def _ratio_summary(times, reference):
    """Median and IQR of the per-repetition ratios ``times / reference``."""
    ratios = np.asarray(times) / np.asarray(reference)
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return {"median": float(med), "q1_q3": [float(q1), float(q3)]}


def time_exported(name, size, args, log):
    """One voting_det model of ``--methods`` at ``size``: exported (TorchScript and
    ONNX, traced on that input), then eager, TorchScript and ONNX Runtime timed
    interleaved on the same network input; their outputs compared on it."""
    import tempfile

    from voting_det.export import (FORMATS, ExportedModel, compare_detections, detections, export_metadata,
                                   export_model, output_names, postprocess)

    h, w = size
    image = make_inputs(h, w)[0]["image"].float()  # the network input: no resize (as the eager timings)
    config, opts = _model_spec(name, args.opts)
    model, cfg = build_model_from_config(config, opts, "cpu")
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        files = export_model(model, image, folder, FORMATS, metadata=export_metadata(cfg))
        export_s = time.perf_counter() - start
        sizes_mb = {fmt: os.path.getsize(files[fmt]) / 2**20 for fmt in FORMATS}
        ts = ExportedModel.load(folder, "torchscript")
        ort = ExportedModel.load(folder, "onnx", threads=args.threads)

        def eager():
            with torch.inference_mode():
                return detections(model, image)

        def torchscript():
            with torch.inference_mode():
                return ts.raw(image)

        runners = {"eager": eager, "torchscript": torchscript, "onnxruntime": lambda: ort.raw(image)}
        times = time_interleaved(runners, args.warmup, args.reps,
                                 on_round=lambda i: log(f"  {name} {h}x{w}: round {i + 1}/{args.reps}"))
        names = output_names(model)
        want = postprocess(eager(), names, (h, w), h, w)
        difference = {r: compare_detections(want, postprocess(runners[r](), names, (h, w), h, w))
                      for r in EXPORTED_RUNTIMES[1:]}
    return {
        "config": config,
        "time": {r: summarise_times(times[r]) for r in EXPORTED_RUNTIMES},
        "times_ms": {r: [1e3 * t for t in times[r]] for r in EXPORTED_RUNTIMES},  # per repetition, in round order
        "ratio_to_eager": {r: _ratio_summary(times[r], times["eager"]) for r in EXPORTED_RUNTIMES[1:]},
        "difference_to_eager": difference,
        "export_s": export_s,
        "file_mb": sizes_mb,
    }


def write_exported_markdown(report, path):
    m = report["machine"]
    L = ["# Exported models (TorchScript, ONNX Runtime) next to eager PyTorch\n",
         f"Command: `{report['command']}`  ",
         f"Commit {report['commit'][:10]}, {report['date']}. Machine: {m['cpu']}, {m['cores']} cores, "
         f"{report['threads']} thread(s) for torch and ONNX Runtime (intra-op), torch {m['torch']}, "
         f"onnxruntime {report['onnxruntime']}.\n",
         "Untrained weights (seed 0; the work does not depend on them), the configs' test settings "
         "(100 test proposals unless --opts says otherwise), batch 1, the image given at the timed size "
         "(the network input: no resize, no rescale, no NT measurement: the exported graph's work). Eager = the same traced function run by PyTorch "
         "(`torch.inference_mode`). The three are interleaved in every repetition "
         f"({report['reps']} after {report['warmup']} warm-ups); ratios are taken per repetition (median, IQR). "
         "Difference to eager: the largest box coordinate (network-input pixels) and score difference on the "
         "timed input.\n"]
    for size, rows in report["exported"].items():
        L.append(f"## {size}\n")
        L.append("| model | eager ms | TorchScript ms | ONNX Runtime ms | TorchScript / eager (IQR) | "
                 "ONNX Runtime / eager (IQR) | max box / score difference (TS; ORT) | files MiB (ts, onnx) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            t, q = r["time"], r["ratio_to_eager"]
            ratio = {k: f"{v['median']:.2f} ({v['q1_q3'][0]:.2f}-{v['q1_q3'][1]:.2f})" for k, v in q.items()}
            d = r["difference_to_eager"]
            diff = "; ".join(f"{_fmt(d[k]['max_box_px'], 4)} / {_fmt(d[k]['max_score'], 6)}" for k in d)
            L.append(f"| {name} | {t['eager']['median_ms']:.0f} | {t['torchscript']['median_ms']:.0f} | "
                     f"{t['onnxruntime']['median_ms']:.0f} | {ratio['torchscript']} | {ratio['onnxruntime']} | "
                     f"{diff} | {r['file_mb']['torchscript']:.0f}, {r['file_mb']['onnx']:.0f} |")
        L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def run_exported(args, sizes, log):
    """``--exported``: every voting_det model of ``--methods`` at every size."""
    import onnxruntime

    if not args.device.startswith("cpu"):
        raise cli.UserError(f"--device {args.device}: --exported times ONNX Runtime on the CPU; use --device cpu")
    names = [n for n in args.methods if cli.load_config(*_model_spec(n, args.opts)).MODEL.META_ARCHITECTURE
             == "VotingRCNN"]
    if not names:
        raise cli.UserError(f"--methods {' '.join(args.methods)}: none is a voting_det model; --exported times "
                            "voting_det's exports (e.g. --methods ls lcf proposed)")
    skipped = [n for n in args.methods if n not in names]
    if skipped:
        log(f"--exported: {', '.join(skipped)} left out (detectron2's own models: tools/deploy/export_model.py)")
    os.makedirs(args.out, exist_ok=True)
    report = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], repo_root())] + sys.argv[1:]),
        "commit": git_commit(repo_root()), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info("cpu"),
        "threads": args.threads, "onnxruntime": onnxruntime.__version__, "reps": args.reps, "warmup": args.warmup,
        "exported": {},
    }
    stem = os.path.join(args.out, "export_cpu")
    for size in sizes:
        key = f"{size[0]}x{size[1]}"
        report["exported"][key] = {}
        for name in names:
            log(f"exported {name} at {key}")
            report["exported"][key][name] = time_exported(name, size, args, log)
            with open(stem + ".json", "w") as f:  # after every model: a partial run is kept
                json.dump(report, f, indent=1)
            write_exported_markdown(report, stem + ".md")
    log(f"wrote {stem}.md and {stem}.json")
    return 0


def main(argv=None):
    args = parse_args(argv)
    sizes = [_size(s) for s in args.sizes]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise cli.UserError(f"--device {args.device}: no CUDA device here; use --device cpu")
    if args.exported:
        torch.set_num_threads(args.threads)
        return run_exported(args, sizes, lambda msg: print(msg, flush=True))
    names = list(args.methods)
    if PROPOSED in names:
        names.insert(names.index(PROPOSED) + 1, EXPLAIN)
    for name in names:  # every model's config with --opts, before any timing
        cli.load_config(*_model_spec(name, args.opts))
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    report = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], repo_root())] + sys.argv[1:]),
        "commit": git_commit(repo_root()), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(args.device),
        "reps": args.reps, "warmup": args.warmup, "train_batch": args.train_batch,
        "matmul_peak_gflops": matmul_peak_gflops(device=args.device),
        "accuracy": read_accuracy(args.accuracy),
        "inference": {}, "flops": {}, "memory": {}, "training": {}, "scaling": {},
    }
    log(f"matrix-multiply peak {report['matmul_peak_gflops']:.1f} GFLOP/s")
    if args.profile or args.only_profile:
        write_profile(sizes[0], args, os.path.join(args.out, "profile_proposed.txt"))
        log(f"wrote {os.path.join(args.out, 'profile_proposed.txt')}")
        if args.only_profile:
            return
    for i, size in enumerate(sizes):
        key = f"{size[0]}x{size[1]}"
        log(f"inference at {key}")
        result, models, inputs = time_inference(names, size, args, log)
        report["inference"][key] = result
        if not args.no_flops:
            report["flops"][key] = flops_of(models, inputs, log)
        del models
        if not args.no_memory:
            report["memory"][key] = {}
            for name in names:
                config, opts = _model_spec(name, args.opts)
                report["memory"][key][name] = measure_memory_in_subprocess(
                    config, opts, size[0], size[1], threads=args.threads, device=args.device)
                log(f"  memory {name}: {report['memory'][key][name]['peak_rss_mb']:.0f} MiB")
        if i == 0 and args.train_reps > 0:
            report["training"][key] = time_training(names, size, args, log)
        if i == 0 and args.scaling_reps > 0 and PROPOSED in names:
            report["scaling"][key] = time_scaling(size, args, log)
        with open(os.path.join(args.out, "speed.json"), "w") as f:  # after every size: a partial run is kept
            json.dump(report, f, indent=1)
        write_markdown(report, os.path.join(args.out, "speed.md"))
    log(f"wrote {os.path.join(args.out, 'speed.md')} and speed.json")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
