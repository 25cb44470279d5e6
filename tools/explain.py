#!/usr/bin/env python
"""Explain a trained voting_det model's predictions: one Fig. 4-style panel
(PNG) and one JSON trace per image.

    python tools/explain.py --config-file output/demo/stage2_voting/config.yaml \\
        --input IMAGE_OR_FOLDER --output DIR [--top 5] [--detections 3] [KEY VALUE ...]
    python tools/explain.py --config-file CFG --dataset nt_fold0_test --num-images 4 --output DIR \\
        MODEL.WEIGHTS output/demo/stage2_voting/model_final.pth

``--input`` reads an image or a folder (searched recursively; grey or colour,
any size); ``--dataset`` reads a registered data set and also draws its
ground-truth boxes. For every image, ``DIR/<name>.png`` shows the top detection's
voting process (boxes of every stage, context boxes, alpha_k and c_k of every
primitive, and for the top primitives of each level Rs_k, D_k, Phi_k and Rc_k)
and ``DIR/<name>.json`` holds the trace of the top ``--detections`` (arrays as
lists, boxes in image pixels). How to read them: docs/interpretation.md.
Existing outputs are never replaced without ``--overwrite``.
"""
import argparse
import logging

from detectron2.data import MetadataCatalog
from tqdm.contrib.logging import logging_redirect_tqdm

import voting_det  # noqa: F401  (registers the data sets and the model)
from voting_det.inference import class_names_from_cfg
from voting_det.interpretation import Explainer
from voting_det.interpretation.explain import (
    DEFAULT_DETECTIONS,
    common_root,
    dataset_records,
    explain_images,
    input_records,
    setup_cfg,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (YAML)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an image, or a folder searched recursively")
    source.add_argument("--dataset", help="a registered data set (e.g. nt_fold0_test); draws its ground truth")
    p.add_argument("--num-images", type=int, default=None, help="with --dataset: the first N images (default all)")
    p.add_argument("--output", required=True, help="folder for the panels and traces")
    p.add_argument("--top", type=int, default=None,
                   help="top primitives per level shown and traced (MODEL.EXPLAIN.TOP_PRIMITIVES, default 5)")
    p.add_argument("--detections", type=int, default=DEFAULT_DETECTIONS, help="detections per image in the JSON")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs of the same name")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth")
    args = p.parse_args(argv)
    if args.top is not None and args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    if args.detections < 1:
        p.error(f"--detections must be >= 1, got {args.detections}")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    cfg = setup_cfg(args.config_file, args.opts, args.top)
    if args.input is not None:
        root, records = input_records(args.input)
        class_names = class_names_from_cfg(cfg)
    else:
        records = dataset_records(args.dataset, args.num_images)
        root = common_root(records)
        class_names = MetadataCatalog.get(args.dataset).get("thing_classes")
    explainer = Explainer(cfg)
    with logging_redirect_tqdm():
        written = explain_images(explainer, records, root, args.output, detections=args.detections,
                                 class_names=class_names, overwrite=args.overwrite, progress=not args.no_progress)
    panels = [png for png, _ in written if png]
    skipped = len(records) - len(written)
    print(f"{len(written)} image(s) explained: {len(panels)} panel(s) and {len(written)} JSON trace(s) "
          f"in {args.output}" + (f"; {skipped} unreadable file(s) skipped (see the warnings)" if skipped else ""))
    for png, js in written[:10]:
        print(f"  {png or '(no detection, no panel)'}  {js}")
    if len(written) > 10:
        print(f"  ... and {len(written) - 10} more")


if __name__ == "__main__":
    main()
