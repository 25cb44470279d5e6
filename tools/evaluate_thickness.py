#!/usr/bin/env python
"""The NT thickness check: each test image's top-1 detection measured
(voting_det.measurement) and compared with a reference (benchmarks/thickness.py).

    python tools/evaluate_thickness.py \
        --runs benchmarks/results/runs/cpu/nt_real --methods proposed fpn_R18 --folds 0 1 2 \
        --reference benchmarks/results/thickness/caliper_reference.csv \
        --images "/path/to/fetus_framework_nt/Train & Val" \
        --synthetic-runs benchmarks/results/runs/cpu-synthetic/nt \
        --synthetic-metadata datasets/nt_synthetic/metadata.csv \
        --out benchmarks/results/thickness

Real images: the reference is the sonographer's calipers (tools/extract_caliper_reference.py),
measured on the images with the marks removed (and, for comparison, as they are). Synthetic
images: the generator's truth. Writes ``thickness.md`` (tables), ``bland_altman.png`` and one
CSV per detector and data set with every image's numbers (no image data).
Exit status: 0 when written; 2 for a user error (one line).
"""
import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from voting_det import cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tools/evaluate_thickness.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="benchmarks/results/runs/cpu/nt_real",
                   help="folder of the real set's runs: <runs>/<method>/fold<k>/eval/inference/... (a run archive)")
    p.add_argument("--dataset", default="nt_real", help="data set name of the runs' evaluations (nt_real)")
    p.add_argument("--methods", nargs="+", default=["proposed", "fpn_R18"], help="detector rows whose top-1 box is measured")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--reference", default="benchmarks/results/thickness/caliper_reference.csv",
                   help="the sonographers' caliper reference (tools/extract_caliper_reference.py)")
    p.add_argument("--images", action="append", default=[],
                   help="folder holding the real images, where the paths recorded in the runs do not exist here "
                        "(repeatable)")
    p.add_argument("--keep-marks", action="store_true", help="do not remove the caliper marks before measuring")
    p.add_argument("--synthetic-runs", default="", help="folder of the synthetic set's runs (e.g. "
                   "benchmarks/results/runs/cpu-synthetic/nt); '' = no synthetic check")
    p.add_argument("--synthetic-dataset", default="nt")
    p.add_argument("--synthetic-folds", nargs="+", type=int, default=[0])
    p.add_argument("--synthetic-metadata", default="", help="the synthetic set's metadata.csv (its truth)")
    p.add_argument("--synthetic-images", action="append", default=[])
    p.add_argument("--out", default="benchmarks/results/thickness")
    return p


def parse(argv=None):
    return cli.parse_args(build_parser(), argv)


def _runs_of(root, dataset, method, folds):
    """(fold, run folder) for the folds whose test evaluation exists."""
    out, missing = [], []
    for k in folds:
        folder = os.path.join(root, method, f"fold{k}")
        path = os.path.join(folder, "eval", "inference", f"{dataset}_fold{k}_test", "nt_detections.json")
        (out if os.path.isfile(path) or os.path.isfile(path + ".gz") else missing).append((k, folder))
    if not out:
        raise cli.UserError(f"--runs {root}: no test evaluation of {method} for folds {list(folds)} "
                            f"(looked for {method}/fold<k>/eval/inference/{dataset}_fold<k>_test/nt_detections.json)")
    return out, [k for k, _ in missing]


def _write_rows(rows, path):
    keys = ["file_name", "fold", "reference_px", "reference_located", "pixel_spacing_mm", "spacing_source",
            "marks_removed", "top1_iou", "profile", "box", "profile_gt_box", "profile_with_marks",
            "profile_gt_box_with_marks"]
    with open(path + ".tmp", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys])
    os.replace(path + ".tmp", path)


def main(argv=None):
    args = parse(argv)
    from benchmarks import thickness as th

    if not os.path.isfile(args.reference):
        raise cli.UserError(f"--reference {args.reference}: no such file; make it with tools/extract_caliper_reference.py")
    os.makedirs(args.out, exist_ok=True)
    reference = th.read_reference(args.reference)
    command = "python tools/evaluate_thickness.py " + " ".join(
        f'"{a}"' if " " in a else a for a in (argv if argv is not None else sys.argv[1:]))
    parts = [f"Command: `{command}`", "", th.HUMAN, ""]
    panels, summaries = [], {}
    for method in args.methods:
        runs, missing = _runs_of(args.runs, args.dataset, method, args.folds)
        rows = []
        for k, folder in runs:
            records = th.split_records(folder, f"{args.dataset}_fold{k}_test")
            rows += th.measure_images(records, reference, args.images, remove_marks=not args.keep_marks, fold=k)
        _write_rows(rows, os.path.join(args.out, f"thickness_{args.dataset}_{method}.csv"))
        summary = th.summarise(rows, th.MEASURED + ("profile_with_marks",))
        summaries[f"{args.dataset}/{method}"] = summary
        title = (f"Real images, top-1 box of {method}, test folds {[k for k, _ in runs]}"
                 + (f" (missing: {missing})" if missing else "") + f": {len(rows)} images with a caliper row")
        parts += [th.format_summary(summary, title), ""]
        located = [r for r in rows if r["reference_located"] and r["pixel_spacing_mm"] == r["pixel_spacing_mm"]]
        panels.append({"title": f"real, {method}: profile (marks removed) vs sonographer, mm",
                       "method": [r["profile"] * r["pixel_spacing_mm"] for r in located],
                       "reference": [r["reference_px"] * r["pixel_spacing_mm"] for r in located],
                       "groups": [f"spacing: {r['spacing_source']}" for r in located], "unit": "mm"})
    if args.synthetic_runs:
        if not os.path.isfile(args.synthetic_metadata):
            raise cli.UserError(f"--synthetic-metadata {args.synthetic_metadata!r}: no such file (the synthetic "
                                "set's metadata.csv, written by tools/make_synthetic_nt.py)")
        truth = th.read_synthetic_truth(args.synthetic_metadata)
        for method in args.methods:
            runs, missing = _runs_of(args.synthetic_runs, args.synthetic_dataset, method, args.synthetic_folds)
            rows = []
            for k, folder in runs:
                records = th.split_records(folder, f"{args.synthetic_dataset}_fold{k}_test")
                rows += th.measure_images(records, truth, args.synthetic_images, remove_marks=False, fold=k)
            _write_rows(rows, os.path.join(args.out, f"thickness_{args.synthetic_dataset}_{method}.csv"))
            summary = th.summarise(rows, th.MEASURED)
            summaries[f"{args.synthetic_dataset}/{method}"] = summary
            parts += [th.format_summary(summary, f"Synthetic images (generator's truth), top-1 box of {method}, "
                                        f"test folds {[k for k, _ in runs]}: {len(rows)} images with an NT"), ""]
            if method == args.methods[0]:
                panels.append({"title": f"synthetic, {method}: profile vs generator's truth, mm",
                               "method": [r["profile"] * r["pixel_spacing_mm"] for r in rows],
                               "reference": [r["reference_px"] * r["pixel_spacing_mm"] for r in rows],
                               "unit": "mm"})
    th.plot_bland_altman(panels, os.path.join(args.out, "bland_altman.png"))
    with open(os.path.join(args.out, "thickness.md"), "w") as f:
        f.write("# NT thickness against the sonographers' calipers and the synthetic truth\n\n" + "\n".join(parts) + "\n")
    with open(os.path.join(args.out, "thickness_summary.json"), "w") as f:
        json.dump(summaries, f, indent=1, default=float)
    print(f"wrote {os.path.join(args.out, 'thickness.md')} and bland_altman.png")
    return summaries


if __name__ == "__main__":
    cli.run_tool(main)
