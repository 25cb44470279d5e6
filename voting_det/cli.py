"""The command-line contract of every tool in ``tools/`` (docs/reliability.md,
"Failure handling"):

- a user error (a missing or unreadable file, a misspelled config key, an
  option in the wrong place, an output that must not be replaced) is ONE line
  on stderr, ``error: <file or key>: <what is wrong>; <what to do>``, and exit
  code :data:`EXIT_USER_ERROR` (2), found before the model is built where it
  can be (:func:`load_config`, :func:`check_input`, :func:`check_weights`, ...);
- a run in which nothing could be processed (every image unreadable, no
  detection at all) is not a success: one ``error:`` line and exit code
  :data:`EXIT_NOTHING_PROCESSED` (1), its outputs (e.g. the table of error
  rows) written;
- anything else is a bug and raises with its traceback.

A tool ends with ``run_tool(main)``; ``main(argv)`` raises :class:`UserError`
(or one of the known user-error types, :func:`user_error_types`) and returns
an exit code or anything else (0). A tool whose ``main`` must return its exit
code instead (it is called from Python) returns :func:`exit_code` of its body.
Tools call :func:`quiet_known_warnings` before detectron2 is imported.

This module imports only the standard library at load time, so that a tool can
run :func:`quiet_known_warnings` from it before ``import voting_det`` (which
imports detectron2, whose import emits one of those warnings); importing it
installs nothing.
"""
import argparse
import functools
import logging
import os
import re
import sys
import warnings
from typing import Callable, Iterable, List, NoReturn, Optional, Sequence, Tuple

__all__ = [
    "EXIT_NOTHING_PROCESSED",
    "EXIT_USER_ERROR",
    "KNOWN_WARNINGS",
    "MissingFileError",
    "NothingProcessedError",
    "PRETRAINED_BACKBONE_KEYS",
    "UnknownNameError",
    "UserError",
    "add_data_argument",
    "register_data",
    "add_overrides",
    "check_datasets",
    "check_input",
    "check_suffix",
    "check_weights",
    "error_line",
    "error_message",
    "exit_code",
    "input_images",
    "load_config",
    "parse_args",
    "quiet_known_warnings",
    "run_tool",
    "user_error_types",
]

# Exit code of a user error (as argparse's own); of a run that processed nothing.
EXIT_USER_ERROR = 2
EXIT_NOTHING_PROCESSED = 1


class UserError(Exception):
    """A mistake in the command or its inputs. The message is one line:
    ``<file or key>: <what is wrong>; <what to do>``. ``details`` are printed
    below it (only the converter's list of bad spreadsheet rows uses them)."""

    def __init__(self, message: str, details: Sequence[str] = ()):
        super().__init__(message)
        self.details = list(details)


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command names does not exist."""


class UnknownNameError(UserError, KeyError):
    """A name (e.g. a data set) that is not registered."""


class NothingProcessedError(Exception):
    """A run that processed none of its inputs; its outputs are written (exit 1)."""


# Third-party messages every tool printed, none of them about the user's run:
# (category, start of the message). Each is filtered by both, nothing else is.
KNOWN_WARNINGS: Tuple[Tuple[type, str], ...] = (
    # detectron2 scripts functions with torch.jit at import
    (FutureWarning, r"`torch\.jit\.script` is deprecated"),
    # detectron2.model_zoo imports pkg_resources
    (UserWarning, r"pkg_resources is deprecated as an API"),
    # detectron2's anchor generator calls torch.meshgrid without indexing=
    (UserWarning, r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument"),
)
# torch.fx logs this warning (not a Python warning) the first time detectron2's
# ROI pooler asks whether it is being traced.
FX_TRACING_LOGGER = "torch.fx._symbolic_trace"
FX_TRACING_MESSAGE = "is_fx_tracing will return true"


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_known_warnings() -> None:
    """Silence exactly :data:`KNOWN_WARNINGS` and torch.fx's tracing notice
    (idempotent). Called by every tool at its start, never on import."""
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    fx_logger = logging.getLogger(FX_TRACING_LOGGER)
    # (by name: a tool may run this module's code twice, before and after importing voting_det)
    if not any(type(f).__name__ == _DropMessage.__name__ for f in fx_logger.filters):
        fx_logger.addFilter(_DropMessage(FX_TRACING_MESSAGE))


def user_error_types() -> Tuple[type, ...]:
    """The exception types :func:`run_tool` reports as user errors (exit 2):
    their messages name the file or key. Imported here, not at load time (see
    the module's docstring)."""
    from .config import UnsafeWeightsError
    from .data.image_io import ImageReadError
    from .data.spreadsheet import SpreadsheetError
    from .inference import NotAPredictionFileError

    return (UserError, FileNotFoundError, FileExistsError, UnsafeWeightsError, ImageReadError, SpreadsheetError,
            NotAPredictionFileError)


def error_message(error: BaseException) -> str:
    """An exception's message on one line (a KeyError's without its quotes; of
    an error re-raised from a data-loader worker, its original message)."""
    message = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    if "Original Traceback" in message:  # torch's re-raise of a worker's exception
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(message.split())


def error_line(error: BaseException) -> str:
    """``error: <message>``, the line a tool prints for a user error."""
    return "error: " + error_message(error)


def exit_code(main: Callable, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` under the rule of this module and return the exit
    code: its returned int (0 for anything else), 2 after a user error, 1
    after :class:`NothingProcessedError` (their line printed on stderr); other
    exceptions keep their traceback."""
    try:
        result = main(argv)
    except NothingProcessedError as e:
        _report(error_line(e))
        return EXIT_NOTHING_PROCESSED
    except user_error_types() as e:
        _report(error_line(e), *getattr(e, "details", []))
        return EXIT_USER_ERROR
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run_tool(main: Callable, argv: Optional[Sequence[str]] = None) -> NoReturn:
    """A tool's ``if __name__ == "__main__":``: :func:`quiet_known_warnings`,
    then exit with :func:`exit_code` of ``main(argv)``."""
    quiet_known_warnings()
    sys.exit(exit_code(main, argv))


def _report(*lines: str) -> None:
    sys.stdout.flush()
    print("\n".join(lines), file=sys.stderr, flush=True)


# --------------------------------------------------------------- the command line

# A detectron2 config key as given on the command line, e.g. MODEL.WEIGHTS.
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` whose errors are :class:`UserError` (one
    line, exit 2), refusing an option given after the ``KEY VALUE`` overrides
    (argparse would read it as a config key, or miss it as a required option)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = parser.prog

    def error(message: str) -> NoReturn:
        raise UserError(f"{prog}: {message}; see {prog} --help")

    parser.error = error  # argparse's own errors (missing, unknown or malformed options) as one line
    if any(action.nargs == argparse.REMAINDER for action in parser._actions):
        _refuse_options_after_overrides(parser, argv)
    args = parser.parse_args(argv)
    if getattr(args, "data", None):
        register_data(args.data)
    return args


DATA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def add_data_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--data NAME=PATH`` (repeatable): register a converted folder for this
    command (:func:`register_data`, run by :func:`parse_args`)."""
    parser.add_argument(
        "--data", action="append", default=[], metavar="NAME=PATH",
        help="register a folder converted by tools/convert_fetus_framework.py: NAME_all (every image) and "
             "NAME_fold{k}_{train,val,test} become data set names for DATASETS.TRAIN / DATASETS.TEST and --dataset; "
             "repeat for several folders",
    )
    return parser


def register_data(specs: Sequence[str]) -> List[str]:
    """Register each ``NAME=PATH`` of ``--data``; returns the registered names.
    A malformed spec, a missing folder or file, or a taken name is a
    :class:`UserError` naming the option's value."""
    from .data.datasets import register_converted_folder

    names = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--data {spec}: give NAME=PATH, e.g. --data mine=/data/mine_coco")
        if not DATA_NAME.match(name):
            raise UserError(f"--data {spec}: NAME must be letters, digits and _ (starting with a letter), "
                            f"e.g. --data my_nt={path}")
        if not os.path.isdir(os.path.expanduser(path)):
            raise MissingFileError(f"--data {spec}: {path} is not a folder; give the --output folder of "
                                   "tools/convert_fetus_framework.py")
        try:
            names += register_converted_folder(name, path)
        except (ValueError, FileNotFoundError) as e:
            raise UserError(f"--data {spec}: {error_message(e)}") from None
    return names


def add_overrides(parser: argparse.ArgumentParser, overwrite: Optional[str] = None,
                  progress: bool = True) -> argparse.ArgumentParser:
    """End a model tool's parser: ``--overwrite`` (with this help, when given),
    ``--no-progress``, and the ``KEY VALUE`` config overrides after every option."""
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help=overwrite)
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, after every option, e.g. MODEL.WEIGHTS model.pth")
    return parser


def _refuse_options_after_overrides(parser: argparse.ArgumentParser, argv: List[str]) -> None:
    first_key, takes_value = None, False
    for i, token in enumerate(argv):
        if not takes_value and _CONFIG_KEY.match(token):
            first_key = i
            break
        action = parser._option_string_actions.get(token)
        takes_value = action is not None and action.nargs != 0  # the next token is its value, not a key
    if first_key is None:
        return
    for token in argv[first_key + 1:]:
        name = token.split("=", 1)[0]
        if name.startswith("--") and len(name) > 2:
            known = name in parser._option_string_actions
            what = "an option" if known else f"not an option of {parser.prog},"
            raise UserError(
                f"{name}: {what} given after the KEY VALUE config overrides, where it would be read as a config "
                f"key; put every option before the overrides (move {name} and its value before {argv[first_key]})"
            )


# ------------------------------------------------------- checks before the model

def load_config(config_file: str, opts: Sequence[str] = (), *, freeze: bool = True, option: str = "--config-file"):
    """:func:`voting_det.config.setup_cfg` whose user errors are :class:`UserError`
    naming the file or key: a missing file, YAML that does not parse, a key
    (in the file or in the overrides) that does not exist, an invalid value."""
    import yaml

    from .config import setup_cfg

    if not os.path.isfile(config_file):
        raise MissingFileError(f"{option} {config_file}: not found; give a config file, e.g. configs/nt_voting.yaml, "
                               "or the config.yaml written next to a trained model")
    try:
        return setup_cfg(config_file, list(opts), freeze=freeze)
    except yaml.YAMLError as e:
        raise UserError(f"{config_file}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None
    except FileNotFoundError as e:  # a _BASE_ of the file
        raise MissingFileError(f"{config_file}: {e}; fix its _BASE_") from None
    except ValueError as e:
        message = str(e)
        if message.startswith("command-line override"):  # setup_cfg's own wording names the key and what to do
            raise UserError(message) from None
        raise UserError(f"{config_file}{' and the overrides' if opts else ''}: {message}") from None
    except (KeyError, AssertionError) as e:  # yacs: a key of the file that does not exist
        raise UserError(f"{config_file}: {error_message(e)}; check its spelling "
                        "(every key: docs/configs.md)") from None


def check_input(path: str, option: str = "--input", what: str = "an image or a folder of images") -> str:
    """Refuse a missing input path."""
    if not os.path.exists(path):
        raise MissingFileError(f"{option} {path}: not found; give {what}")
    return path


def input_images(path: str, option: str = "--input") -> Tuple[str, List[str]]:
    """:func:`voting_det.inference.list_images` of an input that must exist and
    hold at least one image."""
    from .inference import list_images
    from .utils import IMAGE_EXTENSIONS

    root, files = list_images(check_input(path, option))
    if not files:
        raise MissingFileError(f"{option} {path}: no image ({', '.join(IMAGE_EXTENSIONS)}) found; give an image "
                               "or a folder of images (searched recursively)")
    return root, files


def check_suffix(path: str, suffixes: Iterable[str], option: str = "--output") -> str:
    """Refuse a file name that does not end in one of ``suffixes``."""
    suffixes = tuple(suffixes)
    if not path.lower().endswith(suffixes):
        raise UserError(f"{option} {path}: must end in {' or '.join(suffixes)}; give e.g. predictions{suffixes[0]}")
    return path


def _is_url(path: str) -> bool:
    return "://" in path


# Pretrained-backbone files a config may name besides MODEL.WEIGHTS (read when a model is built).
PRETRAINED_BACKBONE_KEYS = ("MODEL.VOTING.PRETRAINED_BACKBONE", "MODEL.CONTEXT.PRETRAINED_BACKBONE")


def check_weights(cfg, required: bool = True, keys: Sequence[str] = ("MODEL.WEIGHTS",)) -> None:
    """The weight files a config names exist and are not pickles it does not
    trust (:func:`voting_det.config.refuse_untrusted_weights`), checked before
    the model is built. ``required``: the first key must not be empty (a model
    predicting with random weights gives confident, meaningless boxes)."""
    from .config import refuse_untrusted_weights

    trust = cfg.MODEL.CHECKPOINT.TRUST_PICKLE
    for i, key in enumerate(keys):
        path = functools.reduce(lambda node, name: getattr(node, name, ""), key.split("."), cfg)
        if not path:
            if required and i == 0:
                raise UserError(f"{key} is empty: the model would run with random weights; give the trained "
                                f"model's weights, e.g. {key} output/demo/stage2_voting/model_final.pth")
            continue
        if _is_url(path):
            continue
        if not os.path.isfile(path):
            hint = "the model_final.pth of a trained model" if key == "MODEL.WEIGHTS" else "an existing file, or ''"
            raise MissingFileError(f"config key {key}: {path} not found; give {hint}")
        refuse_untrusted_weights(path, trust)


def check_datasets(cfg, keys: Sequence[str] = ("DATASETS.TRAIN", "DATASETS.TEST")) -> None:
    """Every data set the config names is registered and its file exists."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    registered = set(DatasetCatalog.list())
    for key in keys:
        section, name = key.split(".")
        for dataset in cfg[section][name]:
            if dataset not in registered:
                known = sorted(n for n in registered if n.startswith("nt") and n.endswith(("_all", "fold0_train")))
                raise UnknownNameError(f"config key {key}: data set {dataset!r} is not registered; voting_det "
                                       f"registers e.g. {known}; register a converted folder of your own with "
                                       "--data NAME=PATH (NAME_all, NAME_fold0_train, ...)")
            json_file = MetadataCatalog.get(dataset).get("json_file", None)
            if json_file and not os.path.isfile(json_file):
                raise MissingFileError(f"config key {key}: data set {dataset}: {json_file} not found; convert the "
                                       "data first (make convert-real, make synthetic-data or "
                                       "tools/convert_fetus_framework.py), below $DETECTRON2_DATASETS")
