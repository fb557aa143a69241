"""The CLI teaches: --version, fast top-level help that imports no command module, a
description and examples per command, help for every option with its default said once,
and KRONOS_RT_<FLAG> for every flag of every command under one naming rule."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from worker.cli import COMMANDS, EXAMPLES, build_parser, command_parser, main
from worker.config import apply_env, env_name


def _options(parser: argparse.ArgumentParser, path: str = ""):
    """(command path, action) for every --option, sub-commands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}".strip())
        elif action.option_strings and action.dest not in ("help", "version"):
            yield path, action


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("kronos-rt 0.")


def test_top_level_help_imports_no_command_module_nor_torch():
    code = ("import sys; from worker.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'aiokafka', 'redis', 'pandas', 'worker.app.worker', 'worker.tools.demo') "
            "if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out, out
    for name in COMMANDS:
        assert name in out


def test_every_command_has_a_description_and_examples():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in COMMANDS:
        p = sub.choices[name]
        assert p.description and len(p.description) > 40, name
        assert 2 <= len(EXAMPLES[name]) <= 3, name
        assert all(e.startswith(("kronos-rt ", "KRONOS_RT_")) for e in EXAMPLES[name])
        assert "examples:" in p.format_help()


def test_every_option_has_help_with_its_default_said_once_and_its_variable():
    for path, action in _options(build_parser()):
        text = action.help or ""
        flag = next(o for o in action.option_strings if o.startswith("--"))
        where = f"kronos-rt {path} {flag}"
        body = text.rsplit(" (", 1)[0]
        assert body.strip() and not body.startswith("("), f"{where}: no help text"
        assert text.lower().count("default") <= 1, f"{where}: default said twice: {text}"
        assert env_name(flag) in text, f"{where}: help does not name {env_name(flag)}"


def test_every_flag_of_every_command_comes_from_the_environment():
    """One value per variable through every parser: each option takes it (typed by its own
    type), whichever command it belongs to."""
    samples = {}
    for path, action in _options(build_parser()):
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if action.nargs == 0:
            samples[env_name(flag)] = "1"
        elif action.choices:
            samples[env_name(flag)] = str(list(action.choices)[-1])
        elif action.type in (int, float):
            samples[env_name(flag)] = "7"
        else:
            samples.setdefault(env_name(flag), "from-env")
    for name in COMMANDS:
        parser = apply_env(_raw_parser(name), environ=samples)
        for path, action in _options(parser):
            flag = next(o for o in action.option_strings if o.startswith("--"))
            value = samples[env_name(flag)]
            if action.default is argparse.SUPPRESS:  # a second copy: see the next test
                continue
            if action.nargs == 0:
                assert action.default == action.const, (name, flag)
            else:
                assert action.default == value or action.choices, (name, flag, action.default)
                assert not action.required, (name, flag)


def test_a_flag_given_before_the_action_beats_the_environment(monkeypatch):
    """`models --registry X ACTION`: the flag's second copy (after the action) must not bring
    the environment back over X; the environment still applies when neither copy is given."""
    monkeypatch.setenv("KRONOS_RT_REGISTRY", "/from-env")
    parse = command_parser("models").parse_args
    assert parse(["--registry", "/before", "list"]).registry == "/before"
    assert parse(["list", "--registry", "/after"]).registry == "/after"
    assert parse(["list"]).registry == "/from-env"


def _raw_parser(name: str) -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[name][0]).configure(p)
    for _, action in _options(p):  # undo what configure() itself applied from the real environment
        action._krt_env = False
    return p


def test_environment_feeds_parsed_values_and_the_command_line_wins(monkeypatch):
    monkeypatch.setenv("KRONOS_RT_BROKERS", "env-host:9092")
    monkeypatch.setenv("KRONOS_RT_SPEED", "60")
    monkeypatch.setenv("KRONOS_RT_NO_PROGRESS", "true")
    args = command_parser("replay").parse_args(["tape.csv"])
    assert (args.brokers, args.speed, args.no_progress) == ("env-host:9092", "60", True)
    args = command_parser("replay").parse_args(["tape.csv", "--brokers", "cli:1"])
    assert args.brokers == "cli:1"
    # the same variable means the same flag in another command
    assert command_parser("report").parse_args([]).brokers == "env-host:9092"
    assert command_parser("tail").parse_args([]).brokers == "env-host:9092"
    monkeypatch.setenv("KRONOS_RT_MAX_BATCH", "12")
    assert command_parser("worker").parse_args([]).max_batch == 12


def test_a_bad_switch_value_in_the_environment_is_a_config_error(monkeypatch):
    from worker.errors import ConfigError

    monkeypatch.setenv("KRONOS_RT_NO_PROGRESS", "maybe")
    with pytest.raises(ConfigError, match="KRONOS_RT_NO_PROGRESS"):
        command_parser("replay")


def test_required_option_satisfied_from_the_environment(monkeypatch):
    monkeypatch.setenv("KRONOS_RT_SHAPE", "mini")
    args = command_parser("models").parse_args(["init"])
    assert args.shape == "mini"
