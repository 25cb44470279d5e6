"""Helpers shared by the tests that run the command-line tools in this
process, the way their ``__main__`` does (no interpreter start-up per call).

Only for tools that do not set up logging before what the test checks: a
tool that does (detectron2's ``setup_logger``) leaves handlers on the capture
streams of the test that ran it, and a later in-process run that logs
through them prints a "Logging error" traceback. Such checks run the tool as
a process (e.g. test_bad_input's config-key test)."""
import importlib.util
import os

import pytest

from voting_det import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOADED = {}


def load_tool(name):
    """``tools/<name>.py`` as a module (loaded once per process); ``name`` may
    also be a script's path relative to the repository (``tools/predict.py``)."""
    path = os.path.join(REPO, name) if name.endswith(".py") else os.path.join(REPO, "tools", f"{name}.py")
    if path not in _LOADED:
        stem = os.path.splitext(os.path.relpath(path, REPO))[0].replace(os.sep, "_")
        spec = importlib.util.spec_from_file_location(f"cli_tool_{stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LOADED[path] = module
    return _LOADED[path]


def run_tool_output(capsys, name, *argv):
    """Exit code, stdout and stderr of ``tools/<name>.py argv`` run by its
    guard (``cli.run_tool``, which exits)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.run_tool(load_tool(name).main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def run_tool(capsys, name, *argv):
    """Exit code and stderr of ``tools/<name>.py argv`` run by its guard."""
    code, _, err = run_tool_output(capsys, name, *argv)
    return code, err
