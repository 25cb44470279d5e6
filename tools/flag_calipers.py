#!/usr/bin/env python
"""Flag the images whose NT carries sonographer calipers (benchmarks.calipers).

Every image below ``--root`` is searched inside its NT box(es) from
``ObjectDetection.xlsx`` enlarged by ``--margin`` pixels; an image without an NT
row is searched whole (flag not validated: overlays count there).

Examples (the real NT development set)::

    # flags for every image, and a summary
    .venv/bin/python tools/flag_calipers.py --root /path/to/fetus_framework_nt --out /tmp/calipers.json
    # agreement with the hand labels (dev half, held-out test half, all)
    .venv/bin/python tools/flag_calipers.py --root /path/to/fetus_framework_nt \\
        --check benchmarks/results/caliper_labels.csv
    # re-derive the thresholds from the dev half (then evaluate them)
    .venv/bin/python tools/flag_calipers.py --root /path/to/fetus_framework_nt \\
        --check benchmarks/results/caliper_labels.csv --choose

The output JSON maps each image's path relative to ``--root`` (the COCO
``file_name`` the converter writes, e.g. ``"Train & Val/0.png"``) to
``{"calipers": bool, "score": float, "colour": float, "plus": float,
"box": [x0, y0, x1, y1] or null}``.

The label file (CSV) has the columns ``file_name`` (relative to the image
folder; matched by name), ``calipers`` (0/1), ``note`` and optionally ``set``,
``split`` (dev / test / other), ``style`` (coloured / plus, for positives) and
``box`` ("x0 y0 x1 y1": a region label instead of the image's NT box).

Exit status: 0 on success, 2 on bad input (one ``error:`` line naming the file).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import posixpath  # noqa: E402
import sys  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Dict, List, Optional, Sequence, Tuple  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.calipers import (  # noqa: E402
    COLOUR_THRESHOLD,
    DEFAULT_MARGIN,
    OUTLINE_THRESHOLD,
    PLUS_THRESHOLD,
    caliper_evidence,
    read_image,
)
from voting_det import cli  # noqa: E402
from voting_det.data.fetus_framework import SPREADSHEET_NAME, index_images  # noqa: E402
from voting_det.data.spreadsheet import read_object_detection_xlsx  # noqa: E402
from voting_det.utils import IMAGE_EXTENSIONS, natural_key  # noqa: E402

STRUCTURE = "NT"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/flag_calipers.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="folder with ObjectDetection.xlsx and the images (read only)")
    parser.add_argument("--out", help="write {file_name: {calipers, score, ...}} for every image to this JSON file")
    parser.add_argument("--check", metavar="CSV", help="hand labels to compare with (precision / recall / accuracy)")
    parser.add_argument(
        "--choose",
        action="store_true",
        help="with --check: choose both thresholds on the 'dev' rows and evaluate those instead of the built-in ones",
    )
    parser.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help="pixels added around the NT box")
    parser.add_argument("--colour-threshold", type=float, default=COLOUR_THRESHOLD)
    parser.add_argument("--plus-threshold", type=float, default=PLUS_THRESHOLD)
    parser.add_argument("--outline-threshold", type=float, default=OUTLINE_THRESHOLD)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = cli.parse_args(parser, argv)
    if not args.out and not args.check:
        parser.error("nothing to do: give --out and/or --check")
    if args.choose and not args.check:
        parser.error("--choose needs --check")
    return args


# ---------------------------------------------------------------- data folder


def resolve(name: str, index: Dict[str, List[str]]) -> Optional[str]:
    """The one image path (relative to the root) that ``name`` designates, or None."""
    normalized = str(name).strip().replace("\\", "/")
    candidates = index.get(posixpath.basename(normalized), [])
    if "/" in normalized:
        candidates = [c for c in candidates if c == normalized or c.endswith("/" + normalized)]
    return candidates[0] if len(candidates) == 1 else None


def nt_boxes(root: str, index: Dict[str, List[str]]) -> Tuple[Dict[str, List[List[float]]], Counter]:
    """Image path -> its NT boxes (x0, y0, x1, y1) from the spreadsheet, and
    counts of the rows that were skipped (and why)."""
    path = os.path.join(root, SPREADSHEET_NAME)
    boxes: Dict[str, List[List[float]]] = {}
    skipped: Counter = Counter()
    if not os.path.isfile(path):
        return boxes, skipped
    for row in read_object_detection_xlsx(path):
        if str(row.structure).strip().lower() != STRUCTURE.lower():
            skipped["other structure"] += 1
            continue
        image = resolve("" if row.fname is None else row.fname, index)
        if image is None:
            skipped["image not found"] += 1
            continue
        try:
            x0, y0, x1, y1 = (float(v) for v in (row.w_min, row.h_min, row.w_max, row.h_max))
        except (TypeError, ValueError):
            skipped["bad coordinate"] += 1
            continue
        if not (x1 > x0 and y1 > y0):
            skipped["empty box"] += 1
            continue
        box = [x0, y0, x1, y1]
        if box not in boxes.setdefault(image, []):
            boxes[image].append(box)
    return boxes, skipped


# ---------------------------------------------------------------- measuring


class Measurer:
    """Caches decoded images and the cues measured per (image, box)."""

    def __init__(self, root: str, margin: int):
        self.root, self.margin = root, margin
        self._image_path, self._image = None, None

    def image(self, relative: str) -> np.ndarray:
        if relative != self._image_path:
            self._image_path, self._image = relative, read_image(os.path.join(self.root, relative))
        return self._image

    def cues(
        self, relative: str, boxes: Sequence[Optional[Sequence[float]]]
    ) -> List[Tuple[Tuple[float, ...], Optional[list]]]:
        """[((colour, plus, outline), box)] for each box (one entry with box None: whole image)."""
        image = self.image(relative)
        out = []
        for box in boxes or [None]:
            e = caliper_evidence(image, box, self.margin)
            out.append(((e.colour, e.plus, e.outline), list(box) if box is not None else None))
        return out


CUES = ("colour", "plus", "outline")


def score(cues: Sequence[float], thresholds: Sequence[float]) -> float:
    """max over the cues of cue / threshold (flagged when >= 1)."""
    return max(value / threshold for value, threshold in zip(cues, thresholds))


def thresholds_of(args) -> Tuple[float, float, float]:
    return args.colour_threshold, args.plus_threshold, args.outline_threshold


def flag_all(args, index, boxes) -> Dict[str, dict]:
    measurer = Measurer(args.root, args.margin)
    images = sorted((p for paths in index.values() for p in paths), key=natural_key)
    out = {}
    for k, relative in enumerate(images, start=1):
        thresholds = thresholds_of(args)
        found = measurer.cues(relative, boxes.get(relative, []))
        cues, box = max(found, key=lambda t: score(t[0], thresholds))
        s = score(cues, thresholds)
        out[relative] = {"calipers": bool(s >= 1.0), "score": round(s, 4)}
        out[relative].update({name: round(value, 3) for name, value in zip(CUES, cues)})
        out[relative]["box"] = box
        if k % 100 == 0:
            print(f"  {k}/{len(images)} images", file=sys.stderr)
    return out


def summarize(out: Dict[str, dict], thresholds: Sequence[float]) -> str:
    annotated = {k: v for k, v in out.items() if v["box"] is not None}
    whole = {k: v for k, v in out.items() if v["box"] is None}
    lines = []
    titles = ("with an NT box", "without an NT box (whole image searched, not validated)")
    for title, part in zip(titles, (annotated, whole)):
        if not part:
            lines.append(f"{title}: 0 images")
            continue
        flagged = [v for v in part.values() if v["calipers"]]
        by_cue = ", ".join(
            f"{name} cue {sum(v[name] >= t for v in flagged)}" for name, t in zip(CUES, thresholds)
        )
        scores = np.array([v["score"] for v in part.values()])
        lines.append(
            f"{title}: {len(part)} images, flagged {len(flagged)} ({100.0 * len(flagged) / len(part):.1f}%; "
            f"{by_cue}); score min {scores.min():.2f}, "
            f"5th percentile {np.percentile(scores, 5):.2f}, median {np.median(scores):.2f}"
        )
        unflagged = sorted((k for k, v in part.items() if not v["calipers"]), key=natural_key)
        if unflagged:
            lines.append(f"  not flagged: {', '.join(unflagged)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- checking


def read_labels(path: str) -> List[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file_name", "calipers"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        rows = []
        for number, row in enumerate(reader, start=2):
            if str(row["calipers"]).strip() not in ("0", "1"):
                raise ValueError(f"{path}:{number}: calipers must be 0 or 1, got {row['calipers']!r}")
            box = (row.get("box") or "").strip()
            rows.append(
                {
                    "line": number,
                    "file_name": row["file_name"].strip(),
                    "calipers": int(row["calipers"]),
                    "set": (row.get("set") or "").strip() or "-",
                    "split": (row.get("split") or "").strip() or "-",
                    "style": (row.get("style") or "").strip(),
                    "box": [float(v) for v in box.split()] if box else None,
                }
            )
    return rows


def metrics(truth: Sequence[int], predicted: Sequence[bool]) -> dict:
    t, p = np.asarray(truth, bool), np.asarray(predicted, bool)
    tp, fp = int((t & p).sum()), int((~t & p).sum())
    fn, tn = int((t & ~p).sum()), int((~t & ~p).sum())
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {
        "n": len(t), "positives": int(t.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp), "accuracy": ratio(tp + tn, len(t)),
    }


def min_error_threshold(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """The threshold (flag when value >= threshold) with the fewest errors
    (negatives at or above it plus positives below it); among equally good
    ones, the midpoint of the widest gap between neighbouring values."""
    negatives, positives = np.asarray(negatives, float), np.asarray(positives, float)
    values = np.unique(np.concatenate([negatives, positives]))
    if values.size == 0:
        raise ValueError("no values to choose a threshold from")
    lows = np.concatenate([[values[0] - 1.0], values])
    highs = np.concatenate([values, [values[-1] + 1.0]])
    candidates = (lows + highs) / 2
    errors = np.array([(negatives >= c).sum() + (positives < c).sum() for c in candidates])
    best = np.flatnonzero(errors == errors.min())
    widest = best[np.argmax((highs - lows)[best])]
    return float(candidates[widest])


def choose_thresholds(dev: Sequence[dict]) -> List[float]:
    """The three thresholds from the dev rows, each with the fewest dev errors
    (:func:`min_error_threshold`), printing how:

    - colour: the coloured-style positives vs all negatives;
    - plus: the plus-style positives vs all negatives;
    - outline: the positives that neither cue above flags vs the negatives
      that neither flags (the outline cue only adds flags).
    """
    negatives = [m for m in dev if not m["calipers"]]
    positives = [m for m in dev if m["calipers"]]
    coloured = [m for m in positives if m["style"] == "coloured"]
    plus_style = [m for m in positives if m["style"] == "plus"]
    print(f"choosing the thresholds on the dev rows ({len(negatives)} negatives, {len(coloured)} coloured-style "
          f"and {len(plus_style)} plus-style positives):")
    if not negatives or not coloured or not plus_style:
        raise ValueError(
            "--choose needs dev rows of each kind: negatives, coloured-style and plus-style positives "
            f"(found {len(negatives)}, {len(coloured)}, {len(plus_style)})"
        )
    colour = min_error_threshold([m["colour"] for m in negatives], [m["colour"] for m in coloured])
    print(f"  colour: negatives max {max(m['colour'] for m in negatives):.2f}, coloured-style positives min "
          f"{min(m['colour'] for m in coloured):.2f} -> {colour:.2f}")
    plus = min_error_threshold([m["plus"] for m in negatives], [m["plus"] for m in plus_style])
    print(f"  plus: negatives max {max(m['plus'] for m in negatives):.2f}, plus-style positives "
          f"{sorted(round(m['plus'], 1) for m in plus_style)} -> {plus:.2f}")
    flagged = lambda m: m["colour"] >= colour or m["plus"] >= plus  # noqa: E731
    missed = [m["outline"] for m in positives if not flagged(m)]
    clean = [m["outline"] for m in negatives if not flagged(m)]
    outline = min_error_threshold(clean, missed) if missed else OUTLINE_THRESHOLD
    print(f"  outline: the {len(missed)} positives still missed {sorted(round(v, 1) for v in missed)} vs the "
          f"{len(clean)} negatives not yet flagged (max {max(clean, default=float('nan')):.2f}) -> {outline:.2f}")
    return [round(colour, 2), round(plus, 2), round(outline, 2)]


def check(args, index, boxes) -> int:
    labels = read_labels(args.check)
    measurer = Measurer(args.root, args.margin)
    measured = []
    for row in labels:
        relative = resolve(row["file_name"], index)
        if relative is None:
            raise cli.UserError(f"{args.check}:{row['line']}: no single image named {row['file_name']!r} under "
                                f"{args.root}; fix the label or the --root")
        region = [row["box"]] if row["box"] else boxes.get(relative, [])
        found = measurer.cues(relative, region)
        # The flag is max over boxes of max over cues of cue / threshold: keep each cue's maximum.
        cues = {name: max(t[0][k] for t in found) for k, name in enumerate(CUES)}
        measured.append(dict(row, whole_image=not region, **cues))
    thresholds = list(thresholds_of(args))
    if args.choose:
        dev = [m for m in measured if m["split"] == "dev"]
        if not dev:
            raise cli.UserError(f"--choose: {args.check} has no rows with split 'dev' to choose the thresholds on")
        try:
            thresholds = choose_thresholds(dev)
        except ValueError as e:
            raise cli.UserError(f"--choose: {e}") from None
    print("thresholds: " + ", ".join(f"{n} {t:.2f}" for n, t in zip(CUES, thresholds)) + f"; margin {args.margin} px")
    for m in measured:
        m["score"] = score([m[n] for n in CUES], thresholds)
        m["flag"] = m["score"] >= 1.0

    groups = [
        ("split dev", lambda m: m["split"] == "dev"),
        ("split test", lambda m: m["split"] == "test"),
        ("dev + test", lambda m: m["split"] in ("dev", "test")),
    ]
    for name in sorted({m["set"] for m in measured}):
        groups.append((f"set {name}", lambda m, name=name: m["set"] == name))
    groups.append(("all rows", lambda m: True))
    print(f"\n{'rows':32s} {'n':>4s} {'pos':>4s} {'tp':>4s} {'fp':>4s} {'fn':>4s} {'tn':>4s} "
          f"{'precision':>9s} {'recall':>7s} {'specif.':>7s} {'accuracy':>8s}")
    for name, keep in groups:
        part = [m for m in measured if keep(m)]
        if not part:
            continue
        r = metrics([m["calipers"] for m in part], [m["flag"] for m in part])
        print(f"{name:32s} {r['n']:4d} {r['positives']:4d} {r['tp']:4d} {r['fp']:4d} {r['fn']:4d} {r['tn']:4d} "
              f"{r['precision']:9.3f} {r['recall']:7.3f} {r['specificity']:7.3f} {r['accuracy']:8.3f}")
    wrong = [m for m in measured if m["flag"] != bool(m["calipers"])]
    print(f"\ndisagreements: {len(wrong)}")
    for m in wrong:
        print(f"  line {m['line']}: {m['file_name']} ({m['set']}, {m['split']}) label {m['calipers']} "
              f"score {m['score']:.2f} (" + ", ".join(f"{n} {m[n]:.2f}" for n in CUES) + ")")
    for cue in CUES:
        for split in ("dev", "test"):
            neg = [m[cue] for m in measured if m["split"] == split and not m["calipers"]]
            pos = [m[cue] for m in measured if m["split"] == split and m["calipers"]]
            if neg and pos:
                print(f"{cue:6s} {split:4s}: negatives max {max(neg):.2f}; positives min {min(pos):.2f}, "
                      f"median {np.median(pos):.2f}")
    return 0


def main(argv=None) -> int:
    """The exit code (0, or 2 after bad input, its line on stderr)."""
    return cli.exit_code(_flag, argv)


def _flag(argv) -> int:
    args = parse_args(argv)
    if not os.path.isdir(args.root):
        raise cli.MissingFileError(f"--root {args.root}: not a folder; give the data set folder")
    index = index_images(args.root)
    if not index:
        raise cli.MissingFileError(f"--root {args.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) below it; give "
                                   "the data set folder")
    if args.check:
        cli.check_input(args.check, "--check", "a CSV of hand labels")
    boxes, skipped = nt_boxes(args.root, index)  # SpreadsheetError: a user error
    images = sum(len(v) for v in index.values())
    print(f"{images} images below {args.root}; {len(boxes)} with an NT box"
          + (f"; spreadsheet rows skipped: {dict(skipped)}" if skipped else ""))
    if args.check:
        try:
            check(args, index, boxes)
        except ValueError as e:  # read_labels: a malformed label file, naming it
            raise cli.UserError(str(e)) from None
    if args.out:
        out = flag_all(args, index, boxes)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
        print(f"\nwrote {args.out}")
        print(summarize(out, thresholds_of(args)))
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
