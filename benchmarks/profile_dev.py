"""The profile measurement's development run (benchmarks/results/thickness/profile_decision.md,
second decision): mean absolute error in px of ``voting_det.measurement.profile_measurement``
for several ``PROFILE_LINE_SHARE`` values on the development images only:

- fold 0's real test images with located caliper marks, in the committed Table 1 Proposed
  run's top-1 box, marks removed (plus-style and coloured-style calipers apart);
- the synthetic set's fold 0 training images with an NT (``datasets/nt``), annotated box,
  against the generator's truth.

    .venv/bin/python -m benchmarks.profile_dev --real-images "/path/to/fetus_framework_nt/Train & Val"
"""
import argparse
import gzip
import json
import os

import numpy as np

import voting_det.measurement as measurement
from benchmarks.thickness import measure_images, read_reference, read_synthetic_truth
from voting_det.data.image_io import read_scan

RUN = "benchmarks/results/runs/cpu/nt_real/proposed/fold0/eval/inference/nt_real_fold0_test/nt_detections.json.gz"


def _mae(errors):
    e = np.asarray(errors, dtype=float)
    ok = np.isfinite(e)
    return f"n={ok.sum()} ({(~ok).sum()} missing) MAE {np.abs(e[ok]).mean():.2f} bias {e[ok].mean():+.2f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real-images", required=True, help="the public NT set's 'Train & Val' folder")
    p.add_argument("--reference", default="benchmarks/results/thickness/caliper_reference.csv")
    p.add_argument("--synthetic-coco", default="datasets/nt/fold0_train.json")
    p.add_argument("--synthetic-metadata", default="datasets/nt_synthetic/metadata.csv")
    p.add_argument("--shares", nargs="+", type=float, default=[0.0, 0.25, 0.5])
    args = p.parse_args(argv)
    ref = read_reference(args.reference)
    with gzip.open(RUN) as f:
        records = [r for r in json.load(f)["images"] if ref.get(os.path.basename(r["file_name"]), {}).get("located")]
    truth = read_synthetic_truth(args.synthetic_metadata)
    with open(args.synthetic_coco) as f:
        coco = json.load(f)
    boxes = {}
    for a in coco["annotations"]:
        boxes.setdefault(a["image_id"], a["bbox"])
    synthetic = [(os.path.basename(im["file_name"]), boxes[im["id"]]) for im in coco["images"]
                 if im["id"] in boxes and os.path.basename(im["file_name"]) in truth]
    folder = os.path.join(os.path.dirname(args.synthetic_metadata), "Train & Val")
    greys = {n: read_scan(os.path.join(folder, n)).astype(np.float64).mean(axis=2) for n, _ in synthetic}
    for share in args.shares:
        measurement.PROFILE_LINE_SHARE = share
        rows = measure_images(records, ref, image_dirs=[args.real_images])
        parts = [f"{style} " + _mae([r["profile"] - r["reference_px"] for r in rows if ref[r["file_name"]]["style"] == style])
                 for style in ("plus", "coloured")]
        errors = [measurement.profile_measurement(greys[n], [x, y, x + w, y + h]).thickness_px - truth[n]["distance_px"]
                  for n, (x, y, w, h) in synthetic]
        parts.append("synthetic " + _mae(errors))
        print(f"PROFILE_LINE_SHARE {share}: " + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
