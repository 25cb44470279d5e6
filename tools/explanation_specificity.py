#!/usr/bin/env python
"""Are voting_det's explanations about *this* image? Between-image overlap of
the top primitives against within-image stability and chance, per level and
ranking, with the deletion test's faithfulness beside it (docs/interpretation.md,
"Explanations that are about this image").

    .venv/bin/python tools/explanation_specificity.py --config-file output/demo/stage2_voting/config.yaml \\
        --dataset nt_fold0_test --output output/demo/specificity \\
        --reference-dataset nt_fold0_train --write-reference \\
        MODEL.WEIGHTS output/demo/stage2_voting/model_final.pth

For the top detection of each image of --dataset and each ranking (c_k,
alpha_k, response mass and, with a reference, the contrastive score: the vote
share minus its mean over the training images), it reports the mean overlap
|A and B| / 5 of the top-5 primitives of two different images, their overlap
under shifts of the same image (first --stability-images images), chance
(5 / K), the tie rate at the top score, the mean between-image correlation of
the scores, and (first --deletion-images images) the deletion test's area vs
random. --write-reference first computes the contrastive reference (mean vote
shares over the top detections of --reference-dataset) and writes it to
--reference (default MODEL.EXPLAIN.REFERENCE, or explain_reference.json beside
MODEL.WEIGHTS). Writes DIR/specificity.json (all numbers, per image too),
DIR/table.json (the figures only, a few kB) and DIR/summary.md (the table
printed at the end); existing files are refused unless --overwrite.

Exit status: 0 when the files are written; 2 for a user error (one line naming
the file or key, found before the model loads where it can be); 1 when fewer
than two images had a detection (nothing written).
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
from voting_det.interpretation import Explainer, check_new_paths, save_json  # noqa: E402
from voting_det.interpretation.explain import dataset_records, setup_cfg  # noqa: E402
from voting_det.interpretation.reference import compute_reference, reference_path, save_reference  # noqa: E402
from voting_det.interpretation.specificity import compact_result, format_specificity, run_specificity  # noqa: E402

OUTPUT_FILES = ("specificity.json", "summary.md", "table.json")
# What run_specificity's error says when fewer than two images had a detection.
NOT_ENOUGH = "the between-image overlap needs at least 2"


def build_parser():
    p = argparse.ArgumentParser(prog="tools/explanation_specificity.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (YAML)")
    p.add_argument("--dataset", required=True, help="the registered split measured, e.g. nt_fold0_test")
    p.add_argument("--output", required=True, help="folder for specificity.json, table.json and summary.md")
    p.add_argument("--num-images", type=int, default=None, help="the first N images of --dataset (default all)")
    p.add_argument("--reference", default=None, metavar="FILE",
                   help="the contrastive reference (sets MODEL.EXPLAIN.REFERENCE; default: explain_reference.json "
                        "beside MODEL.WEIGHTS)")
    p.add_argument("--write-reference", action="store_true",
                   help="compute the reference from --reference-dataset and write it to --reference first")
    p.add_argument("--reference-dataset", default=None, help="the training split of the reference, e.g. nt_fold0_train")
    p.add_argument("--reference-images", type=int, default=None, help="the first N images of --reference-dataset")
    p.add_argument("--stability-images", type=int, default=40, help="within-image stability on the first N images")
    p.add_argument("--shift-px", type=int, default=8, help="stability: shifts of this many pixels (0: none)")
    p.add_argument("--synthetic-seed", type=int, default=None,
                   help="stability on the synthetic set: the generator's --seed (new speckle); leave out on other data")
    p.add_argument("--speckle-draws", type=int, default=1, help="new-speckle renderings per image (--synthetic-seed)")
    p.add_argument("--deletion-images", type=int, default=40, help="deletion test on the first N images (0: none)")
    p.add_argument("--draws", type=int, default=5, help="random deletions per m and image")
    p.add_argument("--seed", type=int, default=0, help="seed of the random deletions")
    cli.add_data_argument(p)
    return cli.add_overrides(p, overwrite="replace existing outputs (and the reference)")


def parse_args(argv=None):
    p = build_parser()
    args = cli.parse_args(p, argv)
    for name in ("num_images", "reference_images"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            p.error(f"--{name.replace('_', '-')} must be >= 2")
    for name in ("stability_images", "shift_px", "speckle_draws", "deletion_images"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.draws < 1:
        p.error("--draws must be >= 1: the random deletions are the reference of every ranking")
    if args.write_reference and not args.reference_dataset:
        p.error("--write-reference needs --reference-dataset (the training split, e.g. nt_fold0_train)")
    return args


def main(argv=None):
    args = parse_args(argv)
    paths = [os.path.join(args.output, name) for name in OUTPUT_FILES]
    check_new_paths(paths, args.overwrite)
    # only the top detection is measured: keep one per image (the top one is unchanged)
    opts = list(args.opts) + ["TEST.DETECTIONS_PER_IMAGE", "1"]
    if args.reference:
        opts += ["MODEL.EXPLAIN.REFERENCE", args.reference]
    cfg = setup_cfg(args.config_file, opts)
    ref_path = reference_path(cfg)
    if args.write_reference:
        check_new_paths([ref_path], args.overwrite)
    records = dataset_records(args.dataset, args.num_images)
    ref_records = dataset_records(args.reference_dataset, args.reference_images) if args.write_reference else None
    if args.write_reference and cfg.MODEL.EXPLAIN.RANK_BY == "contrastive":
        cfg.defrost()
        cfg.MODEL.EXPLAIN.RANK_BY = "contribution"  # the reference does not exist yet
        cfg.freeze()
    cli.check_weights(cfg)
    if not args.write_reference and cfg.MODEL.EXPLAIN.RANK_BY == "contrastive" and not os.path.isfile(ref_path):
        raise cli.MissingFileError(f"MODEL.EXPLAIN.REFERENCE: {ref_path} not found; add --write-reference "
                                   "--reference-dataset <the training split> to compute it")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    explainer = Explainer(cfg)
    with logging_redirect_tqdm():
        if args.write_reference:
            explainer.set_reference(None)
            reference = compute_reference(explainer, ref_records, progress=not args.no_progress,
                                          dataset=args.reference_dataset)
            save_reference(ref_path, reference, overwrite=args.overwrite)
            explainer.set_reference(reference, ref_path)
            print(f"wrote the contrastive reference ({reference['num_images']} images of {args.reference_dataset}) "
                  f"to {ref_path}")
        elif explainer.reference is None:
            print(f"no contrastive reference at {ref_path}: the contrastive ranking is not measured "
                  "(--write-reference --reference-dataset <train split> computes it)")
        try:
            result = run_specificity(explainer, records, stability_images=args.stability_images,
                                     shift_px=args.shift_px, synthetic_seed=args.synthetic_seed,
                                     speckle_draws=args.speckle_draws, deletion_images=args.deletion_images,
                                     num_random=args.draws, seed=args.seed, progress=not args.no_progress)
        except ValueError as e:
            if NOT_ENOUGH not in str(e):
                raise
            raise cli.NothingProcessedError(f"--dataset {args.dataset}: {e}; nothing was written") from None
    result["command"] = {"config_file": args.config_file, "dataset": args.dataset, "weights": cfg.MODEL.WEIGHTS,
                         "reference": ref_path if explainer.reference is not None else None, "opts": list(args.opts)}
    os.makedirs(args.output, exist_ok=True)
    save_json(paths[0], result, overwrite=args.overwrite, indent=1)
    save_json(paths[2], compact_result(result), overwrite=args.overwrite, indent=1)
    summary = format_specificity(result)
    with open(paths[1], "w") as f:
        f.write(f"Model {cfg.MODEL.WEIGHTS}, data set {args.dataset}\n\n{summary}\n")
    print(summary)
    print(f"\nwrote {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
