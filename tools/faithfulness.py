#!/usr/bin/env python
"""Measure whether voting_det's explanations are faithful: the deletion test
and the stability check (docs/interpretation.md).

    .venv/bin/python tools/faithfulness.py --config-file output/demo/stage2_voting/config.yaml \\
        --dataset nt_fold0_test --output output/demo/faithfulness [--num-images 40] [--draws 5] \\
        [--shift-px 8] [--synthetic-seed 0] MODEL.WEIGHTS output/demo/stage2_voting/model_final.pth

For the top detection of each image, the top-m primitives (m = 1, 2, 4, ..., K,
at every level) by alpha_k, by the contribution c_k and by the response mass
are deleted in the forward pass; the tool measures how far the local and fused
boxes move and how much the score drops, against m random primitives
(``--draws`` draws) and the m lowest by alpha. Stability: top-5 overlap under
shifts of ``--shift-px`` pixels and, on the synthetic set (``--synthetic-seed``:
the generator's seed), with new speckle. Writes DIR/faithfulness.json (all
numbers, per image too), DIR/faithfulness.png (curves) and DIR/summary.md
(the table printed at the end). Existing files are refused unless ``--overwrite``.

Exit status: 0 when the files are written; 2 for a user error (one line naming
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
from voting_det.interpretation import Explainer, check_new_paths, save_json  # noqa: E402
from voting_det.interpretation.explain import dataset_records, setup_cfg  # noqa: E402
from voting_det.interpretation.faithfulness import (  # noqa: E402
    DEFAULT_NUM_IMAGES,
    DEFAULT_RANDOM_DRAWS,
    DEFAULT_SHIFT_PX,
    DEFAULT_SPECKLE_DRAWS,
    format_summary,
    plot_faithfulness,
    run_faithfulness,
)

OUTPUT_FILES = ("faithfulness.json", "faithfulness.png", "summary.md")
# How run_faithfulness's error starts when no image had a detection (a run that tested nothing).
NO_DETECTION = "no image had a detection"


def build_parser():
    p = argparse.ArgumentParser(prog="tools/faithfulness.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (YAML)")
    p.add_argument("--dataset", required=True, help="a registered data set split, e.g. nt_fold0_test")
    p.add_argument("--output", required=True, help="folder for faithfulness.json / .png and summary.md")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="the first N images of the split")
    p.add_argument("--draws", type=int, default=DEFAULT_RANDOM_DRAWS, help="random deletions per m and image")
    p.add_argument("--seed", type=int, default=0, help="seed of the random deletions")
    p.add_argument("--shift-px", type=int, default=DEFAULT_SHIFT_PX,
                   help="stability: shift the image by this many pixels left, right, up and down (0: no shifts)")
    p.add_argument("--synthetic-seed", type=int, default=None,
                   help="stability on the synthetic set: the generator's --seed (make demo: 0); re-renders each "
                        "image with new speckle. Leave out on other data")
    p.add_argument("--speckle-draws", type=int, default=DEFAULT_SPECKLE_DRAWS, help="new-speckle versions per image")
    p.add_argument("--extra-tau", default="0.5",
                   help="also rank by alpha_k computed with these trace thresholds tau (Eq. 3), comma-separated; "
                        "'' for none")
    cli.add_data_argument(p)
    return cli.add_overrides(p, overwrite="replace existing outputs")


def parse_args(argv=None):
    p = build_parser()
    args = cli.parse_args(p, argv)
    if args.num_images < 1:
        p.error(f"--num-images must be >= 1, got {args.num_images}")
    for name in ("draws", "shift_px", "speckle_draws"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.draws == 0:
        p.error("--draws must be >= 1: the random deletions are the reference of every ranking")
    try:
        args.extra_tau = [float(t) for t in args.extra_tau.split(",") if t.strip()]
    except ValueError:
        p.error(f"--extra-tau must be comma-separated numbers, got {args.extra_tau!r}")
    if any(not 0.0 <= t < 1.0 for t in args.extra_tau):
        p.error(f"--extra-tau values must be in [0, 1), got {args.extra_tau}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # every user error before the model is built (nothing written until then)
    paths = [os.path.join(args.output, name) for name in OUTPUT_FILES]
    check_new_paths(paths, args.overwrite)
    cfg = setup_cfg(args.config_file, args.opts)
    records = dataset_records(args.dataset, args.num_images)
    cli.check_weights(cfg)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")
    explainer = Explainer(cfg)
    try:
        with logging_redirect_tqdm():
            result = run_faithfulness(explainer, records, num_images=args.num_images, num_random=args.draws,
                                      seed=args.seed, shift_px=args.shift_px, synthetic_seed=args.synthetic_seed,
                                      speckle_draws=args.speckle_draws, extra_taus=args.extra_tau,
                                      progress=not args.no_progress)
    except ValueError as e:
        if not str(e).startswith(NO_DETECTION):
            raise
        raise cli.NothingProcessedError(f"--dataset {args.dataset}: none of its first {len(records)} image(s) had a "
                                        "detection, so there is nothing to test; nothing was written") from None
    result["command"] = {"config_file": args.config_file, "dataset": args.dataset, "weights": cfg.MODEL.WEIGHTS,
                         "opts": list(args.opts)}
    os.makedirs(args.output, exist_ok=True)
    save_json(paths[0], result, overwrite=args.overwrite, indent=1)
    plot_faithfulness(result, paths[1], title=None)
    summary = format_summary(result)
    with open(paths[2], "w") as f:
        f.write(f"Model {cfg.MODEL.WEIGHTS}, data set {args.dataset}\n\n{summary}\n")
    print(summary)
    print(f"\nwrote {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
