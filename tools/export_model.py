#!/usr/bin/env python
"""Export a trained voting_det model (LS, LCF, Proposed, the border-voting
variants) to TorchScript and ONNX through detectron2's deployment path
(TracingAdapter), then check the exported files against the eager model.

    .venv/bin/python tools/export_model.py --config-file CFG.yaml --output DIR \\
        [--format torchscript|onnx|both] [--sample-image IMAGE] [--overwrite] [KEY VALUE ...]

e.g. ``... --output export/ MODEL.WEIGHTS output/nt_voting/model_final.pth``
(options before the ``KEY VALUE`` overrides). Writes ``model.ts``
(TorchScript, ``torch.jit.trace``), ``model.onnx`` (ONNX opset 17) and
``export.json`` (input, outputs, preprocessing) to ``--output``. The graph
takes the resized image (3 x H x W float32, BGR 0-255; H and W dynamic) and
gives ``boxes``, ``scores``, ``classes`` (and ``borders`` with border votes);
the NT measurement and the explanations are not exported (docs/export.md).
The model is traced on ``--sample-image`` (default: a synthetic NT image),
on the CPU; each exported file is then run on that image and on a crop of it
of another aspect ratio (another input size) and its detections are compared
with the eager model's: the largest box and score differences are printed.

Exit status: 0 when exported and within the tolerance; 2 for a user error
(one line naming the file or key, found before the model loads, nothing
written); 1 when an exported file differs from the eager model by more than
the tolerance (nothing is written then either). Existing files are not
replaced without ``--overwrite``.
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import voting_det  # noqa: F401,E402  (registers the data sets)
from voting_det import cli  # noqa: E402
from voting_det.export import (  # noqa: E402
    BOX_TOLERANCE_PX,
    FILE_NAMES,
    FORMATS,
    METADATA_FILE,
    SCORE_TOLERANCE,
    ExportedModel,
    check_exportable,
    compare_detections,
    export_metadata,
    export_model,
    preprocess,
    record_check,
    synthetic_sample_image,
    within_tolerance,
)

BOTH = "both"
# Exit status when an exported file does not reproduce the eager model.
EXIT_CHECK_FAILED = 1
# The second check image: the sample's left part, this share of its width (another aspect ratio).
CROP_WIDTH_FRACTION = 0.75


def build_parser():
    p = argparse.ArgumentParser(prog="tools/export_model.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE",
                   help="model config (YAML), e.g. the config.yaml written next to the trained model")
    p.add_argument("--output", required=True, metavar="DIR", help="folder for model.ts, model.onnx and export.json")
    p.add_argument("--format", choices=FORMATS + (BOTH,), default=BOTH,
                   help="what to write: model.ts, model.onnx, or both (default)")
    p.add_argument("--sample-image", default=None, metavar="IMAGE",
                   help="image (PNG, JPEG, ... or DICOM) to trace and check with; default: a synthetic NT image")
    p.add_argument("--box-tolerance", type=float, default=BOX_TOLERANCE_PX, metavar="PX",
                   help="largest box (and border) difference to the eager model allowed, pixels "
                        f"(default {BOX_TOLERANCE_PX})")
    p.add_argument("--score-tolerance", type=float, default=SCORE_TOLERANCE,
                   help=f"largest score difference to the eager model allowed (default {SCORE_TOLERANCE})")
    p.add_argument("--min-matched", type=float, default=1.0, metavar="FRACTION",
                   help="share of the eager model's detections that must be within the tolerance (default 1: all, "
                        "and as many); below 1 the best detection must be, and the others may differ (a proposal at "
                        "the RPN's top-k / NMS boundary chosen otherwise by float rounding, docs/export.md)")
    return cli.add_overrides(p, overwrite="replace model.ts / model.onnx / export.json in --output", progress=False)


def _check_output(folder: str, formats, overwrite: bool) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise cli.UserError(f"--output {folder}: is a file, not a folder; give a folder for the exported model")
    names = [FILE_NAMES[f] for f in formats] + [METADATA_FILE]
    existing = [n for n in names if os.path.exists(os.path.join(folder, n))]
    if existing and not overwrite:
        raise FileExistsError(f"--output {folder}: {', '.join(existing)} already there; give --overwrite to replace "
                              "them, or another --output")


def _read_sample(path):
    if path is None:
        return synthetic_sample_image(), "synthetic NT image"
    from voting_det.data.image_io import read_scan

    return read_scan(path, "BGR", where="--sample-image"), path


def _describe(diff) -> str:
    text = (f"{diff['exported_detections']} detections (eager {diff['eager_detections']}), "
            f"{diff['matched']} within the tolerance; max box difference {diff['max_box_px']:.2g} px, "
            f"max score difference {diff['max_score']:.2g}")
    if "max_border_px" in diff:
        text += f", max border difference {diff['max_border_px']:.2g} px"
    if diff["unmatched"]:
        text += "; differing: " + ", ".join(f"rank {u['rank']} (score {u['score']:.3g}, box {u['box_px']:.2g} px)"
                                            for u in diff["unmatched"])
    return text


def main(argv=None):
    args = cli.parse_args(build_parser(), argv)
    # every user error before the model is built (nothing written until then)
    for option, value in (("--box-tolerance", args.box_tolerance), ("--score-tolerance", args.score_tolerance)):
        if not value >= 0:
            raise cli.UserError(f"{option} {value}: must be >= 0")
    if not 0 < args.min_matched <= 1:
        raise cli.UserError(f"--min-matched {args.min_matched}: must be in (0, 1], e.g. 1 (every detection) or 0.8")
    # the export traces on the CPU (the traced graph keeps the device it was traced on)
    cfg = cli.load_config(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
    try:
        check_exportable(cfg)
    except ValueError as e:
        raise cli.UserError(f"{args.config_file}: {e}") from None
    formats = list(FORMATS) if args.format == BOTH else [args.format]
    _check_output(args.output, formats, args.overwrite)
    if args.sample_image is not None:
        cli.check_input(args.sample_image, "--sample-image",
                        "an image (PNG, JPEG, ... or DICOM) to trace the model with")
    cli.check_weights(cfg)
    original, sample_name = _read_sample(args.sample_image)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")

    from voting_det.engine import build_predictor

    predictor = build_predictor(cfg)  # weights read by SafeCheckpointer (no code run, shapes checked)
    image = preprocess(original, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT)
    crop = original[:, : max(1, int(original.shape[1] * CROP_WIDTH_FRACTION))]
    created = not os.path.isdir(args.output)
    os.makedirs(args.output, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=args.output)
    try:
        written = export_model(predictor.model, image, staging, formats, metadata=export_metadata(cfg))
        print(f"traced on {sample_name} ({original.shape[0]}x{original.shape[1]}, network input "
              f"{image.shape[1]}x{image.shape[2]}); outputs {', '.join(ExportedModel.load(staging, formats[0]).names)}")
        failed, checks = [], {}
        for fmt in formats:
            exported = ExportedModel.load(staging, fmt)
            for label, picture in (("sample", original), ("crop", crop)):
                diff = compare_detections(predictor(picture)["instances"], exported(picture)["instances"],
                                          args.box_tolerance, args.score_tolerance)
                ok = within_tolerance(diff, args.min_matched)
                checks.setdefault(fmt, {})[f"{label} {picture.shape[0]}x{picture.shape[1]}"] = diff
                print(f"{fmt} vs eager, {label} {picture.shape[0]}x{picture.shape[1]}: {_describe(diff)}"
                      f"{'' if ok else '  <-- above the tolerance'}")
                if not ok:
                    failed.append(f"{fmt} on the {label}")
        if failed:
            print(f"error: {'; '.join(failed)}: the exported model differs from the eager model by more than "
                  f"{args.box_tolerance} px / {args.score_tolerance} in score; nothing written to {args.output}. If "
                  "only low-ranked detections differ (listed above), see docs/export.md (--min-matched); otherwise "
                  "report it with the command and the config", file=sys.stderr)
            shutil.rmtree(staging, ignore_errors=True)
            if created and not os.listdir(args.output):
                os.rmdir(args.output)
            return EXIT_CHECK_FAILED
        record_check(written["metadata"], checks, args.box_tolerance, args.score_tolerance, args.min_matched)
        for key, path in written.items():
            os.replace(path, os.path.join(args.output, os.path.basename(path)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = ", ".join(os.path.join(args.output, os.path.basename(p)) for p in written.values())
    share = "" if args.min_matched >= 1 else f" for at least {args.min_matched:g} of the detections, the best included"
    print(f"wrote {files} (within {args.box_tolerance} px and {args.score_tolerance} of the eager model{share})")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
