#!/usr/bin/env python
"""The main job of `make demo`, on the built-in synthetic NT data:

1. generate the synthetic set (PNG + ObjectDetection.xlsx + metadata.csv, laid
   out like the public "Dataset for Fetus Framework") unless it exists;
2. convert it to COCO JSON with 3 cross-validation folds unless converted;
3. train Proposed with the paper's two stages (LCF, then the whole network)
   on fold 0 for a short CPU schedule at reduced resolution;
4. evaluate on the held-out test fold (COCO AP / AP50);
5. draw the top predictions on a few test images;
6. explain the top prediction of a few test images (trace-back panels and
   JSON traces, as tools/explain.py writes them).

Existing outputs are reused, never overwritten (a finished stage is not
trained again): delete the folders to start anew. Exit status: 0 when done; 2
for a user error (one line naming the file or key, e.g. a misspelled override,
found before anything is generated or trained).
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402

import voting_det  # noqa: F401,E402  (registers data sets and components)
from voting_det import cli  # noqa: E402
from voting_det.data.fetus_framework import convert_fetus_framework, format_report  # noqa: E402
from voting_det.data.image_io import read_scan  # noqa: E402
from voting_det.data.synthetic import generate_synthetic_nt  # noqa: E402
from voting_det.engine import build_predictor  # noqa: E402
from voting_det.engine.two_stage import stage_configs, train_two_stage, trained_config  # noqa: E402
from voting_det.interpretation import Explainer  # noqa: E402
from voting_det.interpretation.explain import common_root, explain_images, output_stem  # noqa: E402

# Size of the demo's synthetic set: enough for 3 folds, generated in seconds.
DEMO_NUM_IMAGES = 240
DEMO_SEED = 0
DEMO_SIZE = (576, 768)
# The two stages' configs: the models of configs/nt_lcf.yaml and nt_voting.yaml
# on the short CPU schedule at reduced resolution of configs/Base-Demo-Schedule.yaml
# (the full schedule is in configs/Base-NT-Common.yaml).
DEMO_CONFIGS = ("configs/nt_lcf_demo.yaml", "configs/nt_voting_demo.yaml")
# Trained on fold 0's training split, tested on its test split.
FOLD0_OPTS = ("DATASETS.TRAIN", "('nt_fold0_train',)", "DATASETS.TEST", "('nt_fold0_test',)")
NUM_DRAWN = 4
# Test images explained with trace-back panels (about 10 s each on a CPU).
NUM_EXPLAINED = 2


def build_parser():
    p = argparse.ArgumentParser(prog="tools/demo.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=os.getenv("DETECTRON2_DATASETS", "datasets"),
                   help="data set root (DETECTRON2_DATASETS); the demo writes nt_synthetic/ and nt/ there")
    p.add_argument("--output-dir", default="output/demo", help="training, evaluation and drawings")
    p.add_argument("--num", type=int, default=DEMO_NUM_IMAGES, help="number of synthetic images")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="generator and fold seed")
    p.add_argument("--workers", type=int, default=2, help="generator processes")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="more config overrides, KEY VALUE ..., after every option")
    return p


def make_data(args):
    source, coco = os.path.join(args.datasets, "nt_synthetic"), os.path.join(args.datasets, "nt")
    print(f"[demo] 1/6 synthetic NT set in {source}")
    if os.path.isfile(os.path.join(source, "ObjectDetection.xlsx")):
        print("[demo]     exists; reusing it (delete the folder to regenerate)")
    else:
        summary = generate_synthetic_nt(source, args.num, seed=args.seed, size=DEMO_SIZE, workers=args.workers)
        print(f"[demo]     {summary['num_images']} images ({summary['num_negatives']} without NT) "
              f"at {summary['images_per_s']:.1f} images/s")
    print(f"[demo] 2/6 COCO folds in {coco}")
    if os.path.isfile(os.path.join(coco, "all.json")):
        print("[demo]     exists; reusing it (delete the folder to convert again)")
    else:
        convert_fetus_framework(source, coco, structures=("NT",), folds=3, seed=args.seed)
    with open(os.path.join(coco, "conversion_report.json")) as f:
        print(format_report(json.load(f)))


def draw_predictions(cfg, out_dir):
    """The trained model's top-3 boxes on the first test images: the top-1 in
    red, the next two in yellow, the true NT box in green."""
    os.makedirs(out_dir, exist_ok=True)
    predictor = build_predictor(cfg)
    name = cfg.DATASETS.TEST[0]
    paths = []
    for record in DatasetCatalog.get(name)[:NUM_DRAWN]:
        image = read_scan(record["file_name"])
        instances = predictor(image)["instances"].to("cpu")[:3]
        vis = Visualizer(image[:, :, ::-1], MetadataCatalog.get(name))
        for ann in record["annotations"]:
            x, y, w, h = ann["bbox"]
            vis.draw_box((x, y, x + w, y + h), edge_color="lime")
        for rank in reversed(range(len(instances))):
            box = instances.pred_boxes.tensor[rank].tolist()
            color = "red" if rank == 0 else "yellow"
            vis.draw_box(box, edge_color=color)
            vis.draw_text(f"#{rank + 1} {instances.scores[rank]:.2f}", (box[0], box[1] - 12), color=color,
                          horizontal_alignment="left")
        path = os.path.join(out_dir, os.path.basename(record["file_name"]))
        cv2.imwrite(path, vis.output.get_image()[:, :, ::-1])
        paths.append(path)
    return paths


def explain_predictions(cfg, out_dir):
    """Trace-back panels (PNG) and traces (JSON) of the first test images, with
    their ground truth; images already explained are reused."""
    records = DatasetCatalog.get(cfg.DATASETS.TEST[0])[:NUM_EXPLAINED]
    root = common_root(records)
    stems = [output_stem(r, root, out_dir) for r in records]
    todo = [r for r, stem in zip(records, stems) if not os.path.isfile(stem + ".json")]
    if todo:
        names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes")
        explain_images(Explainer(cfg), todo, root, out_dir, class_names=names, progress=False)
    else:
        print("[demo]     exist; reusing them (delete the folder to explain again)")
    return [stem + ".png" for stem in stems if os.path.isfile(stem + ".png")]


def main(argv=None):
    args = cli.parse_args(build_parser(), argv)
    if args.num < 1 or args.workers < 1:
        raise cli.UserError(f"--num {args.num} --workers {args.workers}: both must be >= 1")
    # every config error before anything is generated or trained (the data sets are registered already)
    opts = list(FOLD0_OPTS) + list(args.opts)
    for path in DEMO_CONFIGS:
        cli.load_config(path, opts)
    setup_logger(name="voting_det")
    setup_logger()
    start = time.perf_counter()
    make_data(args)

    print("[demo] 3/6 training Proposed on fold 0: stage 1 LCF, then stage 2 the whole network")
    stage1, stage2 = stage_configs(*DEMO_CONFIGS, args.output_dir, opts)
    results = train_two_stage(stage1, stage2)

    print("[demo] 4/6 evaluation on the held-out test fold (nt_fold0_test)")
    for stage, result in results.items():
        bbox = result.get("bbox", {})
        print(f"[demo]     {stage}: AP {bbox.get('AP', float('nan')):.1f}  AP50 {bbox.get('AP50', float('nan')):.1f}")
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)

    # the trained Proposed (stage 2's MODEL.WEIGHTS is the stage-1 model it started from)
    trained = trained_config(stage2)
    print("[demo] 5/6 predictions drawn on test images")
    drawn = draw_predictions(trained, os.path.join(args.output_dir, "predictions"))

    print("[demo] 6/6 explanations (trace-back panels) of test images")
    explained = explain_predictions(trained, os.path.join(args.output_dir, "explanations"))
    print(f"[demo] done in {time.perf_counter() - start:.0f} s. Outputs:\n"
          f"  data        {args.datasets}/nt_synthetic (images, spreadsheet), {args.datasets}/nt (COCO folds)\n"
          f"  models      {stage1.OUTPUT_DIR}/model_final.pth, {stage2.OUTPUT_DIR}/model_final.pth\n"
          f"  metrics     {args.output_dir}/metrics.json\n"
          f"  drawings    {', '.join(drawn)}\n"
          f"  explained   {', '.join(explained)} (how to read them: docs/interpretation.md)")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
