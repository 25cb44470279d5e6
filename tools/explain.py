#!/usr/bin/env python
"""Explain a trained voting_det model's predictions: one Fig. 4-style panel
(PNG) and one JSON trace per image.

    .venv/bin/python tools/explain.py --config-file output/demo/stage2_voting/config.yaml \\
        --input IMAGE_OR_FOLDER --output DIR [--top 5] [--detections 3] [KEY VALUE ...]
    .venv/bin/python tools/explain.py --config-file CFG --dataset nt_fold0_test --num-images 4 --output DIR \\
        MODEL.WEIGHTS output/demo/stage2_voting/model_final.pth

``--input`` reads an image or a folder (searched recursively; grey or colour,
any size; PNG, JPEG, BMP, TIFF or DICOM: of a multi-frame DICOM file the first
frame, or ``--frame N``; a DICOM file's pixel spacing gives the thickness in
mm, docs/dicom.md); ``--dataset`` reads a registered data set and also draws
its ground-truth boxes. For every image, ``DIR/<name>.png`` shows the top detection's
voting process (boxes of every stage, context boxes, alpha_k and c_k of every
primitive, and for the top primitives of each level Rs_k, D_k, Phi_k and Rc_k)
and ``DIR/<name>.json`` holds the trace of the top ``--detections`` (arrays as
lists, boxes in image pixels). How to read them: docs/interpretation.md.
Existing outputs are never replaced without ``--overwrite``.

Exit status: 0 when at least one image was explained; 2 for a user error (one
line naming the file or key, found before the model loads, nothing written); 1
when no image could be read.
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import logging  # noqa: E402

from detectron2.data import MetadataCatalog  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

import voting_det  # noqa: F401,E402  (registers the data sets and the model)
from voting_det import cli  # noqa: E402
from voting_det.inference import class_names_from_cfg  # noqa: E402
from voting_det.interpretation import Explainer, check_new_paths  # noqa: E402
from voting_det.interpretation.explain import (  # noqa: E402
    DEFAULT_DETECTIONS,
    common_root,
    dataset_records,
    explain_images,
    input_records,
    output_paths,
    setup_cfg,
)


def build_parser():
    p = argparse.ArgumentParser(prog="tools/explain.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (YAML)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an image, or a folder searched recursively")
    source.add_argument("--dataset", help="a registered data set (e.g. nt_fold0_test); draws its ground truth")
    p.add_argument("--num-images", type=int, default=None, help="with --dataset: the first N images (default all)")
    p.add_argument("--output", required=True, help="folder for the panels and traces")
    p.add_argument("--top", type=int, default=None,
                   help="top primitives per level shown and traced (MODEL.EXPLAIN.TOP_PRIMITIVES, default 5)")
    p.add_argument("--detections", type=int, default=DEFAULT_DETECTIONS, help="detections per image in the JSON")
    p.add_argument("--frame", type=int, default=None, metavar="N",
                   help="of multi-frame (cine) DICOM files, explain frame N (from 0; default the first)")
    cli.add_data_argument(p)
    return cli.add_overrides(p, overwrite="replace existing outputs of the same name")


def parse_args(argv=None):
    p = build_parser()
    args = cli.parse_args(p, argv)
    if args.top is not None and args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    if args.detections < 1:
        p.error(f"--detections must be >= 1, got {args.detections}")
    if args.frame is not None and args.frame < 0:
        p.error(f"--frame must be >= 0 (frames are counted from 0), got {args.frame}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # every user error before the model is built (nothing written until then)
    cfg = setup_cfg(args.config_file, args.opts, args.top)
    if args.input is not None:
        root, records = input_records(args.input)
        class_names = class_names_from_cfg(cfg)
    else:
        records = dataset_records(args.dataset, args.num_images)
        root = common_root(records)
        class_names = MetadataCatalog.get(args.dataset).get("thing_classes")
    check_new_paths(output_paths(records, root, args.output), args.overwrite)
    cli.check_weights(cfg)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    explainer = Explainer(cfg)
    with logging_redirect_tqdm():
        written = explain_images(explainer, records, root, args.output, detections=args.detections,
                                 class_names=class_names, overwrite=args.overwrite, progress=not args.no_progress,
                                 frame=args.frame)
    panels = [png for png, _ in written if png]
    skipped = len(records) - len(written)
    print(f"{len(written)} image(s) explained: {len(panels)} panel(s) and {len(written)} JSON trace(s) "
          f"in {args.output}" + (f"; {skipped} unreadable file(s) skipped (see the warnings)" if skipped else ""))
    for png, js in written[:10]:
        print(f"  {png or '(no detection, no panel)'}  {js}")
    if len(written) > 10:
        print(f"  ... and {len(written) - 10} more")
    if not written:
        raise cli.NothingProcessedError(f"{args.input or args.dataset}: none of its {len(records)} image(s) could "
                                        "be read (see the warnings); nothing was written")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
