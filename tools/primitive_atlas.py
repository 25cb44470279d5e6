#!/usr/bin/env python
"""The primitive atlas of a trained voting_det model (the paper's Fig. 3).

    python tools/primitive_atlas.py --config-file output/demo/stage2_voting/config.yaml \\
        --dataset nt_fold0_test --output output/demo/atlas [--num-images 80] [--patches 8] \\
        MODEL.WEIGHTS output/demo/stage2_voting/model_final.pth

Over the images (a registered data set with its ground truth, or ``--input``
files), the top detection of each is traced; then for every primitive at every
level a page shows the image patches where it responds most (the receptive
field of that cell, its ROI bin in red) and its spatial template D_k, and a
summary page shows the most used primitives (by mean alpha_k on correct
detections, i.e. IoU > 0.5 with the ground truth). Open DIR/index.html in a
browser (offline). Existing files are never replaced without ``--overwrite``.
"""
import argparse
import logging
import os

from tqdm.contrib.logging import logging_redirect_tqdm

import voting_det  # noqa: F401  (registers the data sets and the model)
from voting_det.interpretation import Explainer
from voting_det.interpretation.atlas import (
    ATLAS_RANKINGS,
    DEFAULT_PATCHES,
    DEFAULT_SUMMARY_PRIMITIVES,
    collect_atlas,
    render_atlas,
)
from voting_det.interpretation.explain import dataset_records, input_records, setup_cfg

# Images traced by default: a test fold of the demo set, a few minutes on a CPU.
DEFAULT_NUM_IMAGES = 80


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (YAML)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a registered data set (e.g. nt_fold0_test)")
    source.add_argument("--input", help="an image folder (no ground truth: usage over all top detections)")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="the first N images")
    p.add_argument("--output", required=True, help="folder of the atlas (index.html, summary.png, <level>/...)")
    p.add_argument("--patches", type=int, default=DEFAULT_PATCHES, help="patches per primitive page")
    p.add_argument("--summary-primitives", type=int, default=DEFAULT_SUMMARY_PRIMITIVES,
                   help="primitives per level on the summary page")
    p.add_argument("--rank-by", choices=ATLAS_RANKINGS, default="alpha",
                   help="order of the summary and the index: mean alpha_k on correct detections (the paper's), "
                        "or mean share of the vote c_k / Phi(x^) (the more faithful ranking, docs/interpretation.md)")
    p.add_argument("--overwrite", action="store_true", help="replace existing atlas files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth")
    args = p.parse_args(argv)
    for name in ("num_images", "patches", "summary_primitives"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    cfg = setup_cfg(args.config_file, args.opts)
    if args.dataset is not None:
        records = dataset_records(args.dataset, args.num_images)
        title = f"Primitive atlas: {args.dataset}, {len(records)} images"
    else:
        _, records = input_records(args.input)
        records = records[: args.num_images]
        title = f"Primitive atlas: {args.input}, {len(records)} images"
    explainer = Explainer(cfg)
    with logging_redirect_tqdm():
        data = collect_atlas(explainer, records, progress=not args.no_progress)
        paths = render_atlas(data, args.output, num_patches=args.patches, summary_primitives=args.summary_primitives,
                             title=title, rank_by=args.rank_by, overwrite=args.overwrite,
                             progress=not args.no_progress)
    print(f"atlas of {len(data['images'])} image(s) ({len(data['skipped'])} without detection): "
          f"open {os.path.abspath(paths[0])} in a browser; summary {paths[1]}; {len(paths) - 3} primitive pages")


if __name__ == "__main__":
    main()
