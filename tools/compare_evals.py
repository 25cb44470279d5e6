#!/usr/bin/env python
"""Compare evaluations of the same test images: metrics with 95% bootstrap
intervals, paired differences against the first one, and where each top-1 box
fails (the per-branch / per-stage analysis of a Table 1 row).

    .venv/bin/python tools/compare_evals.py \\
        "Proposed (fused)=output/benchmark/cpu/nt_real/proposed/fold0/eval/inference/nt_real_fold0_test" \\
        "local branch alone=output/diagnostics/.../local/inference/nt_real_fold0_test" \\
        --out benchmarks/results/diagnostics/proposed_fold0.md

Each argument is LABEL=FOLDER (split at the last "="), the folder holding NTEvaluator's
``nt_detections.json`` (or, in a benchmark archive, ``nt_detections.json.gz``); the
settings must be identical (refused otherwise).
FOLDER may list several folders separated by ":" (os.pathsep) to pool the
images of several evaluations, e.g. the validation splits of two folds, each
with its own fold's model: every argument must then pool the same images.
With --per-folder-ids an image in two pooled folders counts once per folder
(overlapping validation splits of different folds, each evaluated by its own
fold's model); every argument must then list its folders in the same order.
Exit status: 0 when written; 2 for a user error (one line naming the argument).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import sys  # noqa: E402
from types import SimpleNamespace  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.tables import failure_lines  # noqa: E402
from voting_det import cli  # noqa: E402
from voting_det.evaluation import check_same_settings, load_records  # noqa: E402
from voting_det.evaluation import metrics as M  # noqa: E402
from voting_det.evaluation.evaluator import DETECTIONS_FILE  # noqa: E402

KEYS = (("top1_acc", "top-1 acc / SEN"), ("paper_auc", "AUC"), ("paper_spe", "SPE"), ("mean_iou", "mean IoU"))


def build_parser():
    p = argparse.ArgumentParser(prog="tools/compare_evals.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("evals", nargs="+", help="LABEL=FOLDER with nt_detections.json; the first is the reference")
    p.add_argument("--num-bootstrap", type=int, default=1000)
    p.add_argument("--per-folder-ids", action="store_true",
                   help="pooled folders are evaluations by different models (e.g. each fold's own validation split): "
                        "an image id counts once per folder, paired with the same-position folder of every argument")
    p.add_argument("--out", help="write the Markdown here as well")
    return p


def parse_args(argv=None):
    return cli.parse_args(build_parser(), argv)


def _fmt(key, v):
    return f"{v:.3f}" if key == "mean_iou" else f"{v:.1f}"


def main(argv=None):
    """The exit code (0, or 2 after a user error, its line on stderr)."""
    return cli.exit_code(_compare, argv)


def _compare(argv):
    args = parse_args(argv)
    loaded = []
    for item in args.evals:
        label, sep, folders = item.rpartition("=")
        parts = folders.split(os.pathsep)
        paths = [os.path.join(folder, DETECTIONS_FILE) for folder in parts]
        missing = [p for p, folder in zip(paths, parts) if not folder or not (os.path.isfile(p) or os.path.isfile(p + ".gz"))]
        if not sep or missing:
            raise cli.UserError(f"{item!r}: not LABEL=FOLDER[{os.pathsep}FOLDER...] with a {DETECTIONS_FILE} (or "
                                f"{DETECTIONS_FILE}.gz) in each FOLDER (missing: {', '.join(missing) or 'the LABEL='})")
        pieces = [load_records(p) for p in paths]
        try:  # pooled pieces must have been evaluated alike
            settings = check_same_settings({p: s for p, (_, s, _) in zip(paths, pieces)})
        except ValueError as e:
            raise cli.UserError(f"{label!r}: {e}") from None
        records, where = [], {}
        for k, (path, (_, _, rs)) in enumerate(zip(paths, pieces)):
            for r in rs:
                if args.per_folder_ids:
                    r = dict(r, image_id=f"{k}:{r['image_id']}")
                where.setdefault(str(r["image_id"]), []).append(path)
                records.append(r)
        twice = {i: ps for i, ps in where.items() if len(ps) > 1}
        if twice:
            shown = "; ".join(f"{i} in {', '.join(ps)}" for i, ps in sorted(twice.items())[:5])
            raise cli.UserError(f"{label!r}: pools {len(twice)} image id(s) more than once ({shown}); pool "
                                "evaluations of different images, or pass --per-folder-ids if each folder is another "
                                "model's evaluation (e.g. overlapping validation splits of different folds)")
        loaded.append((label, folders, settings, sorted(records, key=lambda r: str(r["image_id"]))))
    try:
        common = check_same_settings({label: settings for label, _, settings, _ in loaded})
    except ValueError as e:
        raise cli.UserError(f"{', '.join(repr(label) for label, _, _, _ in loaded)}: {e}") from None
    ids = [str(r["image_id"]) for r in loaded[0][3]]
    for i, (label, folder, settings, records) in enumerate(loaded[1:], 1):
        try:
            loaded[i] = (label, folder, settings, M.align_records(loaded[0][3], records))
        except ValueError as e:
            raise cli.UserError(f"{label!r}: evaluated on other images than {loaded[0][0]!r}: {e}") from None
    stats = [M.analyse(r, iou=common["match_iou"], top_n=common["paper_top_n"]) for _, _, _, r in loaded]
    per_folder = " (image ids counted once per pooled folder: --per-folder-ids)" if args.per_folder_ids else ""
    # the options that change the numbers, so that the recorded command reproduces them
    flags = (" --per-folder-ids" if args.per_folder_ids else "") + (
        f" --num-bootstrap {args.num_bootstrap}" if args.num_bootstrap != 1000 else "")
    lines = [f"# {len(ids)} images{per_folder}, settings: " + ", ".join(f"`{k}={v}`" for k, v in common.items()), "",
             "Command: `python tools/compare_evals.py " + " ".join(f'"{e}"' for e in args.evals) + flags + "`", "",
             "| evaluation | " + " | ".join(f"{name} [95%]" for _, name in KEYS)
             + f" | minus {loaded[0][0]}: " + " | ".join(name for _, name in KEYS) + " |",
             "|---|" + "---|" * (2 * len(KEYS))]
    for (label, _, _, _), s in zip(loaded, stats):
        point = M.summarise(s)
        boot = M.bootstrap(s, num=args.num_bootstrap)
        cells = [f"{_fmt(k, point[k])} [{_fmt(k, boot[k][0])}, {_fmt(k, boot[k][1])}]" for k, _ in KEYS]
        if s is stats[0]:
            diffs = ["-"] * len(KEYS)
        else:
            d = M.paired_bootstrap(s, stats[0], num=args.num_bootstrap)
            diffs = [f"{d[k]['diff']:+.3f} [{d[k]['low']:+.3f}, {d[k]['high']:+.3f}]" if k == "mean_iou" else
                     f"{d[k]['diff']:+.1f} [{d[k]['low']:+.1f}, {d[k]['high']:+.1f}]" for k, _ in KEYS]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")
    data = {label: {"method": SimpleNamespace(label=label), "folds": {0: {"records": records, "stats": s}}}
            for (label, _, _, records), s in zip(loaded, stats)}
    lines += failure_lines(data)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
