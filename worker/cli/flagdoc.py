"""docs/FLAGS.md, generated from the `kronos-rt` parsers themselves, so the flag reference and
`--help` cannot drift apart.

    python -m worker.cli.flagdoc            # print the reference
    python -m worker.cli.flagdoc --write    # rewrite docs/FLAGS.md
    python -m worker.cli.flagdoc --check    # exit 1 when docs/FLAGS.md is out of date

Every command of worker/cli/__init__.py's COMMANDS (and every action of a command with
sub-commands, such as `models pull`) gets one table: one row per flag or positional argument
with its KRONOS_RT_<FLAG> variable, its default and its help text, the same words
`kronos-rt COMMAND --help` prints. The output is the same on every machine: no terminal
width enters it, the KRONOS_RT_* variables of the calling shell are ignored, and defaults that
name this checkout or the home directory are written relative to the repository or as `~`.
tests/worker/cli/test_flagdoc.py fails when docs/FLAGS.md is not what this prints.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from worker.cli import COMMANDS, command_parser
from worker.config import ENV_PREFIX, env_name

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "docs" / "FLAGS.md"
COMMAND = "python -m worker.cli.flagdoc --write"

HEADER = f"""# Flag reference

Generated from the `kronos-rt` parsers by `{COMMAND}`: do not edit by hand
(`tests/worker/cli/test_flagdoc.py` fails when this file and the parsers differ). `kronos-rt
COMMAND --help` says the same, with examples.

Every `--flag` can also come from the environment as `KRONOS_RT_<FLAG>` (the env column); a
flag on the command line wins. Switches take `1`/`true`/`yes` or `0`/`false`/`no`. Secrets
(`--sasl-password`, `--sasl-username`) can also come from a file named by `KRONOS_RT_<FLAG>_FILE`
(see [OPERATING.md](OPERATING.md), "Secured Kafka"). `--debug` anywhere on the command line
(or `KRONOS_RT_DEBUG=1`) adds the traceback to an error; `kronos-rt --version` prints the version.
"""


@contextlib.contextmanager
def _no_env():
    """Parsers read KRONOS_RT_* as they are built: build them as if none were set."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def parser_for(name: str) -> argparse.ArgumentParser:
    """`kronos-rt NAME`'s parser, built as `kronos-rt NAME --help` builds it, with no
    KRONOS_RT_* variable applied."""
    with _no_env():
        return command_parser(name)


def _portable(text: str) -> str:
    """Machine-specific paths in a default or help text, written the same on every machine."""
    text = text.replace(str(ROOT) + os.sep, "").replace(str(ROOT), ".")
    home = str(Path.home())
    if home not in ("", "/"):
        text = text.replace(home, "~")
    return text


def _cell(text: str) -> str:
    """Plain text in a Markdown table cell: no line breaks, no column or HTML surprises."""
    text = " ".join(str(text).split())
    for ch in ("\\", "|", "<", ">", "*"):
        text = text.replace(ch, "\\" + ch)
    return text


def _code(text: str) -> str:
    """A code span in a Markdown table cell (where only `|` needs escaping)."""
    return "`" + " ".join(str(text).split()).replace("|", "\\|") + "`"


def _split_default(text: str) -> tuple[str, str | None]:
    """'help (default: X)' -> ('help', 'X'); the default is said once, in a final parenthesis."""
    text = text.rstrip()
    if not text.endswith(")"):
        return text, None
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            break
    inner = text[i + 1:-1]
    if not inner.lower().startswith("default"):
        return text, None
    if inner.strip().lower() == "default":  # a switch that is on unless turned off
        return text[:i].rstrip(), "yes"
    value = inner[len("default"):].lstrip(":").strip()
    return text[:i].rstrip(), value or '""'


def _strip_env(text: str, name: str) -> str:
    """Take apply_env's `env NAME` note out of a help text (the env column says it)."""
    if text.endswith(f"; env {name})"):
        return text[: -len(f"; env {name})")] + ")"
    if text.endswith(f" (env {name})"):
        return text[: -len(f" (env {name})")]
    return text.replace(f"(env {name})", "").strip()


def _shown_default(action: argparse.Action) -> str:
    d = action.default
    if d is None or d is argparse.SUPPRESS or d == "" or d == [] or action.nargs == 0:
        return ""
    return ",".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)


def rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str, str]]:
    """(flag, env, default, help) for every argument of `parser`, in its own order."""
    formatter = parser._get_formatter()
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest == "help":
            continue
        if action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            flag = ", ".join(action.option_strings)
            if action.nargs != 0:
                meta = action.metavar or action.dest.upper()
                if action.choices and not action.metavar:
                    meta = "{" + ",".join(map(str, action.choices)) + "}"
                flag += f" {meta}"
        else:
            flag = str(action.metavar or action.dest)
        longs = [o for o in action.option_strings if o.startswith("--")]
        env = env_name(longs[0]) if longs and getattr(action, "_krt_env", False) else ""
        text = formatter._expand_help(action) if action.help else ""
        text = _strip_env(text, env) if env else text
        text, said = _split_default(text)
        default = said if said is not None else _shown_default(action)
        out.append((flag, env, _portable(default), _portable(text)))
    return out


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, sub, helps.get(name) or sub.description or ""


def _table(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["| flag | env | default | what |", "|---|---|---|---|"]
    for flag, env, default, text in rows(parser):
        lines.append(f"| {_code(flag)} | {_code(env) if env else ''} | {_code(default) if default else ''} "
                     f"| {_cell(text)} |")
    return lines


def render() -> str:
    """The whole of docs/FLAGS.md."""
    parts = [HEADER, "Commands: " + ", ".join(f"[{n}](#kronos-rt-{n})" for n in COMMANDS) + ".", ""]
    for name, (_, help_text) in COMMANDS.items():
        parser = parser_for(name)
        parts += [f"## kronos-rt {name}", "", _cell(help_text) + ".", ""]
        if any(True for _ in rows(parser)):
            parts += _table(parser) + [""]
        for sub_name, sub, sub_help in _subparsers(parser):
            parts += [f"### kronos-rt {name} {sub_name}", "", _cell(sub_help) + ".", ""]
            parts += _table(sub) + [""]
    return "\n".join(parts).rstrip() + "\n"


def check() -> list[str]:
    """What is wrong with docs/FLAGS.md: [] when it is what render() writes."""
    if not TARGET.exists():
        return [f"{_where()} is missing: run `{COMMAND}`"]
    have = TARGET.read_text()
    problems = []
    for name in COMMANDS:
        parser = parser_for(name)
        scopes = [(f"kronos-rt {name}", parser)] + [(f"kronos-rt {name} {s}", p) for s, p, _ in _subparsers(parser)]
        for title, p in scopes:
            section = _section(have, title)
            for flag, *_ in rows(p):
                if f"| {_code(flag)} |" not in section:
                    problems.append(f"{title} {flag}: no line in docs/FLAGS.md")
    if have != render():
        problems.append("docs/FLAGS.md differs from the parsers' help")
    if problems:
        problems.append(f"run `{COMMAND}` and commit docs/FLAGS.md")
    return problems


def _section(text: str, title: str) -> str:
    """The lines under the heading `title` up to the next heading."""
    out, inside = [], False
    for line in text.splitlines():
        if line.startswith("#"):
            inside = line.lstrip("#").strip() == title
            continue
        if inside:
            out.append(line)
    return "\n".join(out)


def _where() -> str:
    return str(TARGET.relative_to(ROOT)) if TARGET.is_relative_to(ROOT) else str(TARGET)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.cli.flagdoc", description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite docs/FLAGS.md")
    g.add_argument("--check", action="store_true", help="exit 1 when docs/FLAGS.md is out of date")
    args = ap.parse_args(argv)
    if args.write:
        TARGET.write_text(render())
        print(f"wrote {_where()}")
        return 0
    if args.check:
        problems = check()
        for line in problems:
            print(line, file=sys.stderr)
        return 1 if problems else 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
