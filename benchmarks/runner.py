"""Cross-validation runner of the paper's Tables 1 to 3 (docs/method.md section 6).

A *method* is one row: a config (detectron2's built-in detectors through our
``configs/nt_*`` files, or voting_det's), or Proposed's two-stage protocol, plus
the overrides of an ablation. A *profile* is a set of config overrides applied
identically to every row (input size, schedule, loader), documented in
:data:`PROFILES`. Each (method, fold) run is a folder::

    <root>/<profile>/<dataset>/<method>/fold<k>/
        run_config.yaml      the frozen config(s) of the run (checked on resume)
        train/ or stage1_lcf/, stage2_voting/   detectron2's output folders
        eval/inference/<dataset>_fold<k>_{val,test}/nt_metrics.json, nt_detections.json, ...
        run.json             written last: status, wall time, commit, machine

Every step runs in a subprocess (``tools/train_net.py`` / ``tools/train_voting.py``
with ``--resume``), so an interrupted benchmark continues where it stopped: a run
with ``run.json`` is skipped, an unfinished one continues from its last checkpoint.
"""
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from voting_det.engine.two_stage import STAGE2_ALLOW_MISSING

__all__ = ["LONGER", "METHODS", "PROFILES", "Method", "Run", "archive_conflict", "archive_run", "git_commit",
           "plan_runs", "run_all", "repo_root", "trained"]

NUM_FOLDS = 3


@dataclass(frozen=True)
class Method:
    name: str
    config: str  # the config of its (last) stage, relative to the repository root
    two_stage: bool = False  # Proposed: stage 1 = LCF, stage 2 = this config from it
    opts: Tuple[str, ...] = ()  # the row's own overrides (ablations)
    table: str = "1"  # the paper's table it belongs to
    label: str = ""
    # Stage 1 taken from another row's finished run of the same fold (its final
    # weights), then this config trained for the profile's whole schedule: the
    # longer schedule docs/method.md section 6 asks to report separately.
    stage1_from: str = ""
    # The stage-1 config of a two-stage method.
    stage1_config: str = "configs/nt_lcf.yaml"


def _ablation(name, key, value, table):
    return Method(f"proposed_{name}", "configs/nt_voting.yaml", True, (key, str(value)), table,
                  f"Proposed, {name[0]} = {value}")


METHODS: Dict[str, Method] = {
    m.name: m
    for m in [
        Method("faster_rcnn_R18", "configs/nt_faster_rcnn_R18.yaml", label="Faster R-CNN C4, R18 (detectron2)"),
        Method("fpn_R18", "configs/nt_fpn_R18.yaml", label="FPN, R18 (detectron2)"),
        Method("faster_rcnn_R50", "configs/nt_faster_rcnn_R50.yaml", label="Faster R-CNN C4, R50 (detectron2)"),
        Method("fpn_R50", "configs/nt_fpn_R50.yaml", label="FPN, R50 (detectron2)"),
        Method("ls", "configs/nt_ls.yaml", label="LS (voting_det)"),
        Method("lcf", "configs/nt_lcf.yaml", label="LCF (voting_det)"),
        Method("proposed", "configs/nt_voting.yaml", True, label="Proposed (voting_det)"),
        Method("lcf_bv", "configs/nt_lcf_bv.yaml", label="LCF-BV (voting_det; border votes, res2 level)"),
        Method("proposed_bv", "configs/nt_voting_bv.yaml", True, stage1_config="configs/nt_lcf_bv.yaml",
               label="Proposed-BV (voting_det; border votes, res2 level, one backbone, context in the score)"),
        Method("proposed_long", "configs/nt_voting.yaml", table="1-long", stage1_from="lcf",
               label="Proposed, longer schedule (the LCF row's model, then a full schedule jointly)"),
    ]
    + [_ablation(f"K{k}", "MODEL.VOTING.NUM_PRIMITIVES", k, "2") for k in (32, 64, 256)]
    + [_ablation(f"O{o}", "MODEL.CONTEXT.NUM_BOXES", o, "3") for o in (2, 6)]
}
# The default Proposed is K = 128, O = 4: its row is also the K = 128 / O = 4 ablation row.
TABLE1 = ("faster_rcnn_R18", "fpn_R18", "ls", "lcf", "proposed", "proposed_bv", "faster_rcnn_R50", "fpn_R50")
# Reported separately (twice Proposed's budget): stage 1 is the LCF row's own model.
LONGER = ("lcf", "proposed_long")
ABLATIONS = ("proposed_K32", "proposed_K64", "proposed", "proposed_K256", "proposed_O2", "proposed_O6")


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str
    opts: Tuple[str, ...]
    doc: str
    minutes_per_run: float = 60.0  # a rough guess for the first ETA, replaced by measured times


def _schedule(iters, steps, batch, warmup, checkpoint):
    return ("SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(tuple(steps)), "SOLVER.IMS_PER_BATCH", str(batch),
            "SOLVER.WARMUP_ITERS", str(warmup), "SOLVER.CHECKPOINT_PERIOD", str(checkpoint), "TEST.EVAL_PERIOD", "0")


PROFILES: Dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            "cpu", "nt_real",
            ("INPUT.MIN_SIZE_TRAIN", "(480,)", "INPUT.MIN_SIZE_TEST", "480", "INPUT.MAX_SIZE_TRAIN", "1024",
             "INPUT.MAX_SIZE_TEST", "1024", "DATALOADER.NUM_WORKERS", "1", "MODEL.DEVICE", "cpu")
            + _schedule(600, (450,), 2, 50, 100),
            "the real set at native resolution (short edge 480, i.e. about 1:1 for its 640x450 to 680x495 "
            "images); 600 iterations of 2 images (about 3 epochs of a fold's 405 training images), LR x0.1 "
            "at 450; Adam 1e-4 (Base-NT-Common). Measured per run: on a 2-core CPU 24 to 54 min for the R18 "
            "rows with both cores (FPN R18 to Proposed), up to 74 min with one thread beside another run, "
            "an R50 row about 100 min by its iteration time; on one H200 shared by 11 runs, 2 to 5 min.",
            45.0,
        ),
        Profile(
            "cpu-synthetic", "nt",
            ("INPUT.MIN_SIZE_TRAIN", "(576,)", "INPUT.MIN_SIZE_TEST", "576", "INPUT.MAX_SIZE_TRAIN", "1024",
             "INPUT.MAX_SIZE_TEST", "1024", "DATALOADER.NUM_WORKERS", "1", "MODEL.DEVICE", "cpu")
            + _schedule(600, (450,), 2, 50, 100),
            "the built-in synthetic set (make demo's: 240 images, seed 0) at its native 576x768, the cpu "
            "schedule.",
            60.0,
        ),
        Profile(
            "gpu", "nt_real",
            ("INPUT.MIN_SIZE_TRAIN", "(576,)", "INPUT.MIN_SIZE_TEST", "576", "INPUT.MAX_SIZE_TRAIN", "1024",
             "INPUT.MAX_SIZE_TEST", "1024", "DATALOADER.NUM_WORKERS", "4")
            + _schedule(1530, (510, 1020), 8, 100, 250),
            "the paper's setting: 576 short edge (576x768 for 3:4 images), Adam 1e-4, 8 images per "
            "iteration, 30 epochs of 405 images (1530 iterations), LR x0.1 every 10 epochs (at 510 and 1020).",
            20.0,
        ),
        Profile(
            "smoke", "nt",
            ("INPUT.MIN_SIZE_TRAIN", "(160,)", "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TRAIN", "256",
             "INPUT.MAX_SIZE_TEST", "256", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
             "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
             "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "TEST.NT_EVAL.NUM_BOOTSTRAP", "50")
            + _schedule(4, (3,), 1, 0, 100000),
            "a few iterations on small images, to test the runner.",
            1.0,
        ),
    ]
}


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Run:
    """One method trained and evaluated on one split: a cross-validation fold
    of ``dataset`` (``fold`` an int), or an outside split (``fold`` its label,
    ``sets`` the registered names of its ``train``, ``test`` and optional
    ``val`` sets). ``data`` are ``--data NAME=PATH`` registrations its
    commands need."""

    method: Method
    fold: Union[int, str]
    profile: Profile
    dataset: str
    root: str
    extra_opts: Tuple[str, ...] = ()
    sets: Tuple[Tuple[str, str], ...] = ()
    data: Tuple[str, ...] = ()
    folder: str = field(init=False)

    def __post_init__(self):
        self.folder = os.path.join(self.root, self.profile.name, self.dataset, self.method.name, self.split_label)

    @property
    def split_label(self) -> str:
        """``fold<k>``, or an outside split's label."""
        return self.fold if isinstance(self.fold, str) else f"fold{self.fold}"

    @property
    def name(self) -> str:
        return f"{self.method.name}/{self.split_label}"

    def split(self, split: str) -> Optional[str]:
        """The registered name of ``split`` (train, val, test); None for an
        outside split without it (no val set)."""
        if self.sets:
            return dict(self.sets).get(split)
        return f"{self.dataset}_fold{self.fold}_{split}"

    def evaluated_splits(self, splits: Sequence[str] = ("val", "test")) -> List[str]:
        """The ``splits`` this run has (an outside split may lack val)."""
        return [s for s in splits if self.split(s)]

    def opts(self) -> List[str]:
        return (["DATASETS.TRAIN", f"('{self.split('train')}',)", "DATASETS.TEST", "()"]
                + list(self.profile.opts) + list(self.method.opts) + list(self.extra_opts))

    def device(self) -> str:
        """The last MODEL.DEVICE among the run's overrides ("" when none sets it)."""
        opts = self.opts()
        found = [opts[i + 1] for i in range(0, len(opts) - 1, 2) if opts[i] == "MODEL.DEVICE"]
        return found[-1] if found else ""

    @property
    def done_file(self) -> str:
        return os.path.join(self.folder, "run.json")

    def finished(self) -> bool:
        return os.path.isfile(self.done_file)

    def eval_dir(self, split: str) -> Optional[str]:
        name = self.split(split)
        return os.path.join(self.folder, "eval", "inference", name) if name else None

    def train_dirs(self) -> List[str]:
        if self.method.two_stage:
            return [os.path.join(self.folder, "stage1_lcf"), os.path.join(self.folder, "stage2_voting")]
        if self.method.stage1_from:
            return [os.path.join(self.folder, "stage2_voting")]
        return [os.path.join(self.folder, "train")]

    def stage1_run(self) -> Optional["Run"]:
        """The run (same fold, profile, data set, root and overrides) whose final
        weights start this one, for a method with ``stage1_from``."""
        if not self.method.stage1_from:
            return None
        return Run(METHODS[self.method.stage1_from], self.fold, self.profile, self.dataset, self.root, self.extra_opts,
                   self.sets, self.data)

    def _own_opts(self) -> List[str]:
        first = self.stage1_run()
        if not first:
            return self.opts()
        # it starts from an LCF row's final model, which lacks the context branch
        return self.opts() + ["MODEL.WEIGHTS", first.final_weights(),
                              "MODEL.CHECKPOINT.ALLOW_MISSING", str(list(STAGE2_ALLOW_MISSING))]

    def final_weights(self) -> str:
        return os.path.join(self.train_dirs()[-1], "model_final.pth")

    def stage_cfgs(self) -> list:
        """The run's merged config of each stage, as training will use them."""
        from voting_det.config import setup_cfg
        from voting_det.engine.two_stage import stage_configs

        root = repo_root()
        if self.method.two_stage:
            return list(stage_configs(os.path.join(root, self.method.stage1_config),
                                      os.path.join(root, self.method.config), self.folder, self.opts()))
        return [setup_cfg(os.path.join(root, self.method.config), self._own_opts() + ["OUTPUT_DIR", self.train_dirs()[0]])]

    def frozen_configs(self) -> str:
        """The dump of the run's merged config(s), as training will use them."""
        cfgs = self.stage_cfgs()
        if self.method.two_stage:
            return "# stage 1\n" + cfgs[0].dump() + "# stage 2\n" + cfgs[1].dump()
        return cfgs[0].dump()

    def inference_opts(self) -> List[str]:
        """The inference-only settings (``INFERENCE_ONLY_KEYS``) of the method's
        current config, as overrides: the evaluation reads the trained stage's
        saved config, and these keys may have changed since it trained (a
        trained run is evaluated with the settings its method has now)."""
        from voting_det.engine.run_folder import INFERENCE_ONLY_KEYS

        cfg, out = self.stage_cfgs()[-1], []
        for key in INFERENCE_ONLY_KEYS:
            node = cfg
            for part in key.split("."):
                node = node[part]
            out += [key, str(node)]
        return out

    def commands(self, splits: Sequence[str] = ("val", "test")) -> List[List[str]]:
        """Train, then evaluate on ``splits`` of the fold."""
        root, py = repo_root(), sys.executable
        data = [arg for spec in self.data for arg in ("--data", spec)]
        splits = self.evaluated_splits(splits)
        if self.method.two_stage:
            train = [py, os.path.join(root, "tools/train_voting.py"), *data, "--train-set", self.split("train"),
                     "--voting-config", os.path.join(root, self.method.config), "--lcf-config",
                     os.path.join(root, self.method.stage1_config), "--output-dir", self.folder, *self.opts()]
            eval_config = os.path.join(self.train_dirs()[-1], "config.yaml")
        else:
            train = [py, os.path.join(root, "tools/train_net.py"), *data, "--config-file",
                     os.path.join(root, self.method.config), "--resume", *self._own_opts(), "OUTPUT_DIR",
                     self.train_dirs()[0]]
            eval_config = os.path.join(self.train_dirs()[0], "config.yaml")
        evaluate = [py, os.path.join(root, "tools/train_net.py"), *data, "--config-file", eval_config, "--eval-only",
                    *self.inference_opts(), "MODEL.WEIGHTS", self.final_weights(),
                    "DATASETS.TEST", "(" + "".join(f"'{self.split(s)}', " for s in splits) + ")",
                    "OUTPUT_DIR", os.path.join(self.folder, "eval")]
        return [train, evaluate]


def outside_label(train_set: str, test_set: str) -> str:
    """The folder name of an outside split: ``<train>-on-<test>``."""
    return f"{train_set}-on-{test_set}"


# The data-set folder name of outside splits (runs/<profile>/<this>/<method>/<train>-on-<test>).
OUTSIDE_DATASET = "outside"


def plan_runs(methods: Sequence[str], folds: Sequence[int], profile: str, root: str, dataset: Optional[str] = None,
              extra_opts: Sequence[str] = (), train_set: Optional[str] = None, test_set: Optional[str] = None,
              val_set: Optional[str] = None, data: Sequence[str] = ()) -> List[Run]:
    """The runs of ``methods`` on ``folds`` of ``dataset`` (default: the
    profile's), or, with ``train_set`` and ``test_set``, on that one outside
    split (``val_set`` optional), in the order they must run."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    if bool(train_set) != bool(test_set):
        raise ValueError("an outside split needs both a train set and a test set")
    bad = [f for f in folds if not 0 <= f < NUM_FOLDS]
    if bad and not train_set:
        raise ValueError(f"folds must be in 0..{NUM_FOLDS - 1}, got {bad}")
    p = PROFILES[profile]
    # a row that starts from another row's model needs that row first (skipped when finished)
    ordered: List[str] = []
    for m in methods:
        first = METHODS[m].stage1_from
        if first and first not in ordered:
            ordered.append(first)
        if m not in ordered:
            ordered.append(m)
    if train_set:
        sets = (("train", train_set), ("test", test_set)) + ((("val", val_set),) if val_set else ())
        label = outside_label(train_set, test_set)
        return [Run(METHODS[m], label, p, dataset or OUTSIDE_DATASET, root, tuple(extra_opts), sets, tuple(data))
                for m in ordered]
    # fold-major: every method of fold 0 first, so a first complete table exists early
    return [Run(METHODS[m], f, p, dataset or p.dataset, root, tuple(extra_opts), (), tuple(data))
            for f in folds for m in ordered]


def git_commit(root: str) -> str:
    """HEAD of the repository at ``root``, with "-dirty" when tracked files differ from it.

    A copy of the code without its ``.git`` (e.g. a working tree sent to another
    machine) names its commit in ``$VOTING_DET_COMMIT``, recorded with "(copy)"."""
    if not os.path.exists(os.path.join(root, ".git")) and os.environ.get("VOTING_DET_COMMIT"):
        return os.environ["VOTING_DET_COMMIT"] + " (copy)"
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device: str = "cpu") -> dict:
    """This machine, as the speed tool and the run manifests record it: CPU
    model, cores, torch threads, versions, and the GPU for a CUDA device."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine(device: str = "") -> str:
    """One line for a run's manifest: :func:`machine_info` of ``device`` (the
    run's MODEL.DEVICE; "" = cuda when available)."""
    import torch

    m = machine_info(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = f", {m['gpu']}" if "gpu" in m else ""
    return (f"{platform.node()}: {m['cpu']}, {m['cores']} cores, {m['threads']} threads{gpu}; "
            f"torch {m['torch']}, python {m['python']}")


def _check_or_record_config(run: Run) -> str:
    from voting_det.engine.run_folder import refuse_different_config

    text = run.frozen_configs()
    path = os.path.join(run.folder, "run_config.yaml")
    if os.path.isfile(path):
        with open(path) as f:
            saved = f.read()
        # each stage's dump on its own, key by key
        for old_part, new_part in zip(saved.split("# stage 2\n"), text.split("# stage 2\n")):
            refuse_different_config(old_part, new_part, path, "Move that folder away (or use another --root) to start this one")
        if saved != text:  # the same training; the record shows the settings it is evaluated with now
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
    else:
        os.makedirs(run.folder, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


HEARTBEAT_SECONDS = 30.0  # how often a running start's time is written to starts.json


def run_wall_seconds(folder: str, starts: Sequence[dict]) -> float:
    """A run's wall time over all its starts: the seconds recorded in
    ``starts.json``, plus ``wall_seconds.json``, where runners before the
    start-by-start record kept the time of interrupted starts (a start killed
    without a chance to write it there, or before either record existed, is not
    counted)."""
    legacy = os.path.join(folder, "wall_seconds.json")
    previous = json.load(open(legacy)).get("seconds", 0.0) if os.path.isfile(legacy) else 0.0
    return round(previous + sum(s.get("seconds", 0.0) for s in starts), 1)


def trained(run: Run) -> bool:
    """Whether ``run``'s training has finished: its final weights exist and
    detectron2's checkpointer has tagged them (``last_checkpoint``), which it
    does after writing them, so a process killed while writing them does not
    count as trained."""
    from voting_det.engine.run_folder import final_weights_written

    weights = run.final_weights()
    return final_weights_written(os.path.dirname(weights), os.path.basename(weights))


def run_one(run: Run, log=print, val_only: bool = False) -> Optional[dict]:
    """Train (resuming), evaluate on val and test, write ``run.json``. With
    ``val_only`` (a tuning trial decided before its test split is seen): train
    and evaluate on the validation split alone, and leave the run unfinished
    (no ``run.json``, returns None); a later call without it evaluates both
    splits and finishes it without training again."""
    first = run.stage1_run()
    if first is not None and not first.finished():
        raise RuntimeError(f"{run.name} starts from {first.name}'s final model, which has not finished "
                           f"({first.folder}): run {first.method.name} on this fold first")
    config_hash = _check_or_record_config(run)
    # the code a run trained with: the commit at each (re)start, kept across interruptions,
    # and the seconds each start has run so far (rewritten while it runs, so a start
    # that is killed, e.g. when the machine's session ends, keeps its time)
    starts_path = os.path.join(run.folder, "starts.json")
    starts = json.load(open(starts_path)) if os.path.isfile(starts_path) else []
    starts.append({"commit": git_commit(repo_root()), "at": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": 0.0})
    start = time.time()

    def record_time():
        starts[-1]["seconds"] = round(time.time() - start, 1)
        with open(starts_path + ".tmp", "w") as f:
            json.dump(starts, f, indent=1)
        os.replace(starts_path + ".tmp", starts_path)

    record_time()
    log_path = os.path.join(run.folder, "log.txt")
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", repo_root())
    for step, cmd in zip(("train", "evaluate"), run.commands(("val",) if val_only else ("val", "test"))):
        if step == "train" and trained(run):
            continue
        with open(log_path, "a") as logf:
            logf.write(f"\n$ {' '.join(cmd)}\n")
            logf.flush()
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=repo_root())
            try:
                while True:
                    try:
                        proc.wait(timeout=HEARTBEAT_SECONDS)
                        break
                    except subprocess.TimeoutExpired:
                        record_time()
            finally:
                if proc.poll() is None:  # interrupted here (e.g. Ctrl-C): do not leave the step running
                    proc.kill()
                    proc.wait()
                record_time()
        if proc.returncode != 0:
            raise RuntimeError(f"{run.name}: {step} failed (exit {proc.returncode}); see {log_path}")
    if val_only:
        log(f"    {run.name}: trained and evaluated on {run.split('val')} only ({run.eval_dir('val')}); the test "
            "split is not evaluated and the run is not finished: rerun without --val-only to finish it")
        return None
    wall = run_wall_seconds(run.folder, starts)  # each step's end already recorded
    info = {
        "method": run.method.name, "fold": run.fold, "profile": run.profile.name, "dataset": run.dataset,
        "opts": run.opts(), "config_sha256_16": config_hash, "commit": starts[0]["commit"],
        "commits_at_starts": starts, "commit_at_evaluation": git_commit(repo_root()),
        "machine": machine(run.device()), "wall_seconds": wall,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "split_sets": dict(run.sets) if run.sets else None,
        "metrics": {split: os.path.relpath(os.path.join(run.eval_dir(split), "nt_metrics.json"), run.folder)
                    for split in run.evaluated_splits()},
    }
    with open(run.done_file + ".tmp", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(run.done_file + ".tmp", run.done_file)
    return info


# A finished run's small files, kept in an archive of the same layout (the
# detections gzipped): enough to tabulate it again without its weights.
ARCHIVE_FILES = ("run.json", "run_config.yaml", "starts.json", "wall_seconds.json", "eval/eval_results.json")
ARCHIVE_EVAL_FILES = ("nt_metrics.json", "nt_detections.json")


def archive_conflict(run: Run, archive_root: str) -> Optional[str]:
    """Why ``run`` cannot be archived below ``archive_root`` (another run of
    the same method and fold is there), or None."""
    old = os.path.join(archive_root, os.path.relpath(run.folder, run.root), "run.json")
    if not (os.path.isfile(old) and os.path.isfile(run.done_file)):
        return None
    mine, theirs = json.load(open(run.done_file)), json.load(open(old))
    if any(mine.get(k) != theirs.get(k) for k in ("config_sha256_16", "finished_at")):
        return (f"{os.path.dirname(old)} already archives another {run.name} (finished {theirs.get('finished_at')}, "
                f"config {theirs.get('config_sha256_16')}); move it away to archive this one")
    return None


def archive_run(run: Run, archive_root: str) -> str:
    """Copy finished ``run``'s small result files into the same place below
    ``archive_root`` (e.g. ``benchmarks/results/runs``, committed), so that its
    tables can be rebuilt when the output folder is gone: the frozen config,
    the start times, ``eval_results.json``, per split ``nt_metrics.json`` and
    ``nt_detections.json.gz``, and ``run.json`` last (an interrupted copy is
    not a finished run there). Returns the folder. A folder already holding
    another run of the same (method, fold) is refused; the run's own folder
    (an archive that is the runs' root) is left as it is."""
    import gzip
    import shutil

    if not run.finished():
        raise ValueError(f"{run.name} has not finished ({run.folder}): only finished runs are archived")
    dest = os.path.join(archive_root, os.path.relpath(run.folder, run.root))
    if os.path.isdir(dest) and os.path.samefile(dest, run.folder):
        return dest
    conflict = archive_conflict(run, archive_root)
    if conflict:
        raise ValueError(conflict)
    detections = [os.path.join(run.eval_dir(split), "nt_detections.json") for split in run.evaluated_splits()]
    missing = [p for p in detections if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{run.name} is marked finished but lacks {missing}: evaluate it again "
                         f"(remove {run.done_file} and rerun the benchmark command)")
    for name in ARCHIVE_FILES:
        src = os.path.join(run.folder, name)
        if name != "run.json" and os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copyfile(src, os.path.join(dest, name))
    for split in run.evaluated_splits():
        src_dir = run.eval_dir(split)
        dst_dir = os.path.join(dest, os.path.relpath(src_dir, run.folder))
        os.makedirs(dst_dir, exist_ok=True)
        for name in ARCHIVE_EVAL_FILES:
            src = os.path.join(src_dir, name)
            if not os.path.isfile(src):
                continue
            if name.endswith("detections.json"):
                # mtime 0: the same detections give the same bytes
                with open(src, "rb") as f, gzip.GzipFile(os.path.join(dst_dir, name + ".gz"), "wb", mtime=0) as g:
                    shutil.copyfileobj(f, g)
            else:
                shutil.copyfile(src, os.path.join(dst_dir, name))
    shutil.copyfile(run.done_file, os.path.join(dest, "run.json"))
    return dest


def run_all(runs: Sequence[Run], log=print, val_only: bool = False, archive: Optional[str] = None) -> List[dict]:
    """Run every unfinished run in order, printing progress and an ETA
    (``val_only``: see :func:`run_one`); with ``archive``, each run is
    archived (:func:`archive_run`) as soon as it finishes."""
    done_times = []
    infos = []
    todo = [r for r in runs if not r.finished()]
    log(f"{len(runs)} runs, {len(runs) - len(todo)} already finished")
    for i, run in enumerate(todo, 1):
        per = (sum(done_times) / len(done_times)) if done_times else run.profile.minutes_per_run * 60
        log(f"[{i}/{len(todo)}] {run.name} ({run.profile.name}, {run.dataset}) -> {run.folder}; "
            f"ETA for the rest about {per * (len(todo) - i + 1) / 60:.0f} min")
        t = time.time()
        info = run_one(run, log, val_only=val_only)
        if info is not None:
            infos.append(info)
            if archive:
                log(f"    archived in {archive_run(run, archive)}")
        done_times.append(time.time() - t)
        log(f"    finished in {done_times[-1] / 60:.1f} min")
    return infos
