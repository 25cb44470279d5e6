"""The front door cannot rot: every command of the README's (and
docs/reliability.md's) shell blocks runs as written from a clean checkout after
``make setup``. Tool commands use ``.venv/bin/python``, show no optional
``[...]`` parts, put their options before the ``KEY VALUE`` overrides and parse
with the tool's own parser (in this process, no model built); a config file of
the repository they name loads with their overrides; ``make`` targets exist."""
import os
import re
import shlex

import pytest

from voting_det import cli

from .helpers import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", "docs/reliability.md")
PYTHON = ".venv/bin/python"


def shell_commands(path):
    """``(line number, tokens)`` of every command in the file's ```bash blocks
    (backslash continuations joined, comments and ``VAR=value`` prefixes dropped;
    a line that only sets variables defines them for the later ``$VAR``)."""
    commands, block, pending, start, variables = [], False, "", 0, {}
    with open(os.path.join(REPO, path)) as f:
        for number, line in enumerate(f, start=1):
            if line.startswith("```"):
                block = line.strip() in ("```bash", "```sh", "```shell") if not block else False
                continue
            if not block:
                continue
            pending, start = (pending + " " + line.rstrip("\n").rstrip("\\"), start or number)
            if line.rstrip("\n").endswith("\\"):
                continue
            for name, value in variables.items():
                pending = pending.replace(f"${name}", value)
            tokens = shlex.split(pending, comments=True)
            assignments = []
            while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
                assignments.append(tokens[0].split("=", 1))
                tokens = tokens[1:]
            if not tokens:
                variables.update(assignments)
            if tokens:
                commands.append((f"{path}:{start}", tokens))
            pending, start = "", 0
    return commands


COMMANDS = [c for doc in DOCUMENTS for c in shell_commands(doc)]
TOOL_COMMANDS = [(where, tokens) for where, tokens in COMMANDS if len(tokens) > 1 and tokens[1].startswith("tools/")]
MAKE_COMMANDS = [(where, tokens) for where, tokens in COMMANDS if tokens[0] == "make"]


def test_the_documents_have_commands():
    assert len(TOOL_COMMANDS) >= 8 and len(MAKE_COMMANDS) >= 5
    assert all(tokens[0] in (PYTHON, "make") for _, tokens in COMMANDS), COMMANDS


@pytest.mark.parametrize("where,tokens", TOOL_COMMANDS, ids=[w for w, _ in TOOL_COMMANDS])
def test_tool_command_parses_with_the_tools_own_parser(where, tokens, capsys, monkeypatch):
    # --data NAME=PATH names a user's folder: checked for its form here, not registered
    def check_form(specs):
        bad = [s for s in specs if not re.match(r"^[A-Za-z]\w*=.+", s)]
        assert not bad, f"{where}: --data {bad} is not NAME=PATH"
        return list(specs)

    monkeypatch.setattr(cli, "register_data", check_form)
    assert tokens[0] == PYTHON, f"{where}: use {PYTHON} (no activation step is assumed)"
    assert not any(t.startswith("[") for t in tokens), f"{where}: an optional [...] part in a command to copy"
    assert os.path.isfile(os.path.join(REPO, tokens[1])), where
    tool = load_tool(tokens[1])
    with pytest.raises(SystemExit) as exit_:  # the tool's --help, in this process
        tool.main(["--help"])
    assert exit_.value.code == 0
    capsys.readouterr()
    parse = getattr(tool, "parse_args", None) or (lambda argv: cli.parse_args(tool.build_parser(), argv))
    try:
        args = parse(tokens[2:])  # every option exists, options before the overrides, values well formed
    except cli.UserError as e:
        pytest.fail(f"{where}: {e}")
    config = getattr(args, "config_file", None)
    if config and os.path.isfile(os.path.join(REPO, config)):  # a shipped config: its overrides' keys exist
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            cli.load_config(config, args.opts)
        except cli.UserError as e:
            pytest.fail(f"{where}: {e}")
        finally:
            os.chdir(cwd)


def _makefile_targets():
    with open(os.path.join(REPO, "Makefile")) as f:
        return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):(?![=])", f.read(), re.MULTILINE)}


@pytest.mark.parametrize("where,tokens", MAKE_COMMANDS, ids=[w for w, _ in MAKE_COMMANDS])
def test_make_targets_exist(where, tokens):
    targets = [t for t in tokens[1:] if "=" not in t and not t.startswith("-")]
    assert targets and set(targets) <= _makefile_targets(), f"{where}: {targets}"
