"""Where the sonographers' located caliper marks sit on the echogenic lines
(docs/thickness.md): for each located pair, the grey profile down the marks'
column (5 px band, marks removed, Gaussian sigma 1 px), the brightest row within
10 px of each mark taken as that line's middle, and the mark's offset from it,
positive on the far side from the translucency. Marks on the inner borders of
the lines ("on-on", where the profile measurement puts its calipers) lie a few
px inside the peaks; marks on the lines' middles lie at 0.

    .venv/bin/python -m benchmarks.caliper_mark_offsets --images "/path/to/fetus_framework_nt/Train & Val"
"""
import argparse
import csv
import os

import numpy as np
from scipy.ndimage import gaussian_filter1d

from benchmarks.caliper_marks import CaliperMarks, remove_caliper_marks
from voting_det.data.image_io import read_scan


def mark_offsets(grey: np.ndarray, upper, lower, window: int = 10):
    """(upper offset, lower offset) in px of two marks (x, y) from the brightest
    row within ``window`` px of each, down their mean column; positive = the
    mark lies beyond that row, away from the other mark."""
    x = int(round((upper[0] + lower[0]) / 2))
    col = gaussian_filter1d(grey[:, max(0, x - 2):x + 3].mean(axis=1), 1.0)

    def peak(y):
        a, b = int(max(0, round(y) - window)), int(min(len(col), round(y) + window + 1))
        return a + int(np.argmax(col[a:b]))

    return peak(upper[1]) - upper[1], lower[1] - peak(lower[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True)
    p.add_argument("--reference", default="benchmarks/results/thickness/caliper_reference.csv")
    args = p.parse_args(argv)
    by_style = {}
    with open(args.reference, newline="") as f:
        for row in csv.DictReader(f):
            if row["located"] != "1":
                continue
            upper = (float(row["upper_x"]), float(row["upper_y"]))
            lower = (float(row["lower_x"]), float(row["lower_y"]))
            image = read_scan(os.path.join(args.images, row["file_name"]))
            grey = remove_caliper_marks(image, CaliperMarks(upper, lower, row["style"], float(row["score"])))
            by_style.setdefault(row["style"], []).append(mark_offsets(grey.astype(np.float64).mean(axis=2), upper, lower))
    print("| marks | pairs | upper mark from its line's middle: median px [IQR] | beyond it | lower mark: median px [IQR] | beyond it |")
    print("|---|---|---|---|---|---|")
    for style, values in sorted(by_style.items()):
        v = np.array(values)
        cells = []
        for k in (0, 1):
            q1, q2, q3 = np.percentile(v[:, k], [25, 50, 75])
            cells += [f"{q2:+.1f} [{q1:+.1f}, {q3:+.1f}]", f"{np.mean(v[:, k] > 0) * 100:.0f}%"]
        print(f"| {style} | {len(v)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
