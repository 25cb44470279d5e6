#!/usr/bin/env python
"""The primitive atlas of a trained voting_det model (the paper's Fig. 3).

    .venv/bin/python tools/primitive_atlas.py --config-file output/demo/stage2_voting/config.yaml \\
        --dataset nt_fold0_test --output output/demo/atlas [--num-images 80] [--patches 8] \\
        MODEL.WEIGHTS output/demo/stage2_voting/model_final.pth

Over the images (a registered data set with its ground truth, or ``--input``
files), the top detection of each is traced; then for every primitive at every
level a page shows the image patches where it responds most (the receptive
field of that cell, its ROI bin in red) and its spatial template D_k, and a
summary page shows the most used primitives (by mean alpha_k on correct
detections, i.e. IoU > 0.5 with the ground truth). Open DIR/index.html in a
browser (offline). Existing files are never replaced without ``--overwrite``.

Exit status: 0 when the atlas is written; 2 for a user error (one line naming
the file or key, found before the model loads where it can be); 1 when no
image had a detection (nothing written).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import logging  # noqa: E402

from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

import voting_det  # noqa: F401,E402  (registers the data sets and the model)
from voting_det import cli  # noqa: E402
from voting_det.interpretation import Explainer, check_new_paths  # noqa: E402
from voting_det.interpretation.atlas import (  # noqa: E402
    ATLAS_RANKINGS,
    DATA_FILENAME,
    DEFAULT_PATCHES,
    DEFAULT_SUMMARY_PRIMITIVES,
    INDEX_FILENAME,
    SUMMARY_FILENAME,
    collect_atlas,
    render_atlas,
)
from voting_det.interpretation.explain import dataset_records, input_records, setup_cfg  # noqa: E402

# Images traced by default: a test fold of the demo set, a few minutes on a CPU.
DEFAULT_NUM_IMAGES = 80


def build_parser():
    p = argparse.ArgumentParser(prog="tools/primitive_atlas.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    cli.add_data_argument(p)
    return cli.add_overrides(p, overwrite="replace existing atlas files")


def parse_args(argv=None):
    p = build_parser()
    args = cli.parse_args(p, argv)
    for name in ("num_images", "patches", "summary_primitives"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # every user error before the model is built (nothing written until then)
    cfg = setup_cfg(args.config_file, args.opts)
    if args.dataset is not None:
        records = dataset_records(args.dataset, args.num_images)
        title = f"Primitive atlas: {args.dataset}, {len(records)} images"
    else:
        _, records = input_records(args.input)
        records = records[: args.num_images]
        title = f"Primitive atlas: {args.input}, {len(records)} images"
    # the per-primitive pages are checked again once K is known (render_atlas)
    check_new_paths([os.path.join(args.output, name) for name in (INDEX_FILENAME, SUMMARY_FILENAME, DATA_FILENAME)],
                    args.overwrite)
    cli.check_weights(cfg)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    explainer = Explainer(cfg)
    with logging_redirect_tqdm():
        data = collect_atlas(explainer, records, progress=not args.no_progress)
        if not data["images"]:
            raise cli.NothingProcessedError(f"{args.dataset or args.input}: none of its {len(records)} image(s) had "
                                            "a detection, so the atlas would be empty; nothing was written")
        paths = render_atlas(data, args.output, num_patches=args.patches, summary_primitives=args.summary_primitives,
                             title=title, rank_by=args.rank_by, overwrite=args.overwrite,
                             progress=not args.no_progress)
    print(f"atlas of {len(data['images'])} image(s) ({len(data['skipped'])} without detection): "
          f"open {os.path.abspath(paths[0])} in a browser; summary {paths[1]}; {len(paths) - 3} primitive pages")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
