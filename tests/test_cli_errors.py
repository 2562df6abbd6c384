"""The command line's one error path: a user's mistake is one line, `apprentice…: error: …`,
exit code 2, no traceback; `--debug` shows the traceback; every option says what it does."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

# (arguments, what the one line must say); {tmp} is a folder holding a damaged run.json and
# an existing (empty) cache folder.
MISTAKES = [
    (["train", "--data", "/nonexistent", "--out", "{tmp}/run"], "--policy required"),
    (["train", "--policy", "act", "--data", "/nonexistent", "--out", "{tmp}/run"],
     "--data /nonexistent: no such dataset cache or folder of bags"),
    (["train", "--policy", "act", "--data", "{tmp}", "--out", "{tmp}/run",
      "--set", "chunk_sise=10"], "act config has no field 'chunk_sise'; did you mean chunk_size?"),
    (["train", "--policy", "act", "--data", "{tmp}", "--out", "{tmp}/run", "--set", "chunk_size"],
     "expected KEY=VALUE, got 'chunk_size'"),
    (["train", "--policy", "act", "--data", "{tmp}", "--out", "{tmp}/run", "--steps", "-3"],
     "steps must be >= 1, got -3"),
    (["train", "--out", "/nonexistent-run", "--resume"], "/nonexistent-run: no run.json"),
    (["train", "--out", "{tmp}", "--resume"], "run.json: not JSON"),
    (["export", "/nonexistent-run"], "/nonexistent-run: no run.json, not a training run folder"),
    (["export", "{tmp}"], "run.json: not JSON"),
    (["eval", "--policy", "/nonexistent-policy"], "/nonexistent-policy"),
    (["eval", "--policy", "{tmp}"], "policy_card.json"),
    (["eval", "compare", "/nonexistent-a", "{tmp}"], "/nonexistent-a: no such eval folder"),
    (["graph", "run", "nosuch"], "no graph file 'nosuch' and no robot config of that name"),
    (["graph", "run", "sim_so100", "-p", "no_such_param=1"], "no process has parameter"),
    (["dataset", "build", "/nonexistent", "--out", "{tmp}/c"], "/nonexistent: no such folder"),
    (["dataset", "build", "{tmp}", "--out", "{tmp}/cache"],
     "{tmp}/cache exists; --overwrite rebuilds it"),
    (["record", "--robot", "nosuch"], "no robot config 'nosuch'"),
    (["deploy", "--robot", "so101", "--policy", "/nonexistent-policy"], "/nonexistent-policy"),
    (["replay", "/nonexistent"], "/nonexistent: not a bag folder"),
    (["calibrate-camera", "intrinsics", "/nonexistent.png"],
     "/nonexistent.png: no such image file"),
    (["calibrate-arm", "verify", "--robot", "nosuch", "--arm", "follower", "-c", "x.yaml"],
     "no robot config 'nosuch'"),
    (["convert-backbone", "/nonexistent.pth", "--out", "{tmp}/r.safetensors"], "/nonexistent.pth"),
]  # fmt: skip


def _apprentice(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apprentice", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mistakes")
    (folder / "run.json").write_text("{")  # a run folder damaged by a crash while writing
    (folder / "cache").mkdir()
    return folder


@pytest.mark.parametrize(("args", "message"), MISTAKES, ids=[" ".join(m[0]) for m in MISTAKES])
def test_a_mistake_is_one_line_and_exit_code_2(
    tmp: Path, args: list[str], message: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """In this process (`apprentice.cli.main`) where the command runs in it; the commands run
    as a child process (replay, calibrate-*, convert-backbone) through `python -m apprentice`."""
    from apprentice import cli

    args = [a.replace("{tmp}", str(tmp)) for a in args]
    if args[0] in cli.PASS_THROUGH:
        out = _apprentice(*args)
        code, err = out.returncode, out.stderr.strip()
    else:
        code = cli.main(args)
        err = capfd.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    line = err.splitlines()[0]
    assert line.startswith("apprentice") and ": error: " in line, line
    assert message.replace("{tmp}", str(tmp)) in line, line


def test_debug_shows_the_traceback() -> None:
    out = _apprentice("--debug", "graph", "run", "nosuch")
    assert out.returncode != 0 and "Traceback" in out.stderr, out.stderr
    assert "no graph file 'nosuch'" in out.stderr.splitlines()[-1]
    replay = _apprentice("--debug", "replay", "/nonexistent")  # a command in a child process
    assert replay.returncode != 0 and "Traceback" in replay.stderr, replay.stderr


def test_version() -> None:
    from apprentice import __version__

    out = _apprentice("--version")
    assert out.returncode == 0 and out.stdout.split() == ["apprentice", __version__], out.stdout


def _undocumented(p: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{path} {name}")
                missing += _undocumented(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction | argparse._VersionAction):
            if not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_help_text() -> None:
    from apprentice import cli
    from apprentice.calibration import arm_cli, camera_cli
    from apprentice.learning import convert_backbone
    from apprentice_ros import replay

    parsers = {"apprentice": cli.parser(), "apprentice replay": replay.parser(),
               "apprentice calibrate-arm": arm_cli.parser(),
               "apprentice calibrate-camera": camera_cli.parser(),
               "apprentice convert-backbone": convert_backbone.parser()}  # fmt: skip
    missing = [m for path, p in parsers.items() for m in _undocumented(p, path)]
    assert missing == [], missing
    n = sum(len(p._actions) for p in parsers.values())
    assert n > 10  # the walk saw the parsers


def test_a_ctrl_c_no_command_handled_is_one_line_and_exit_130(capsys) -> None:
    from apprentice.errors import run_command

    def interrupted(a: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    assert run_command(interrupted, argparse.Namespace()) == 130
    assert capsys.readouterr().err == "apprentice: interrupted\n"
    with pytest.raises(KeyboardInterrupt):  # --debug keeps the traceback
        run_command(interrupted, argparse.Namespace(), debug=True)
