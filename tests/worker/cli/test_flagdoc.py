"""docs/FLAGS.md is generated from the `kronos-rt` parsers (worker/cli/flagdoc.py): it must be
exactly what the generator prints, every flag of every command (and sub-command) must have its
line, and the output must not depend on the machine or on the caller's KRONOS_RT_* variables."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from worker.cli import COMMANDS, build_parser, flagdoc
from worker.config import Settings, env_name

ROOT = Path(__file__).resolve().parents[3]
FLAGS = ROOT / "docs" / "FLAGS.md"
FIX = "run `python -m worker.cli.flagdoc --write` and commit docs/FLAGS.md"


def _scopes(parser: argparse.ArgumentParser, path: str = ""):
    """(command path, parser) for the parser and each of its sub-commands, as `kronos-rt` builds them."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _scopes(sub, f"{path} {name}".strip())


def _first_cell(row: str) -> list[str]:
    """The option strings in a table row's first cell: `| `-x, --flag META` | ...` -> ['-x', '--flag', 'META']."""
    if not row.startswith("| `"):
        return []
    return re.split(r"[ ,]+", row[3:].split("`", 1)[0])


def test_flags_md_is_what_the_parsers_say():
    assert FLAGS.read_text() == flagdoc.render(), f"docs/FLAGS.md is out of date: {FIX}"


def test_every_flag_of_every_command_has_its_line():
    """Walks the CLI's own full parser (worker.cli.build_parser), not the generator's."""
    text = FLAGS.read_text()
    missing, seen = [], set()
    for path, parser in _scopes(build_parser()):
        if not path:
            continue  # the top level: --debug and --version, said in the header
        section = flagdoc._section(text, f"kronos-rt {path}")
        assert section.strip(), f"docs/FLAGS.md has no section 'kronos-rt {path}': {FIX}"
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = next(o for o in action.option_strings if o.startswith("--"))
            lines = [ln for ln in section.splitlines() if flag in _first_cell(ln)]
            if not lines:
                missing.append(f"kronos-rt {path} {flag}")
            elif getattr(action, "_krt_env", False) and f"`{env_name(flag)}`" not in lines[0]:
                missing.append(f"kronos-rt {path} {flag} (its variable {env_name(flag)})")
            seen.add(path.split()[0])
    assert not missing, "flags without their line in docs/FLAGS.md: " + ", ".join(missing) + f"; {FIX}"
    assert seen == set(COMMANDS)


def test_the_output_does_not_depend_on_the_machine_or_the_environment(monkeypatch):
    first = flagdoc.render()
    monkeypatch.setenv("KRONOS_RT_BROKERS", "elsewhere:9092")
    monkeypatch.setenv("KRONOS_RT_MAX_BATCH", "3")
    monkeypatch.setenv("COLUMNS", "40")
    second = flagdoc.render()
    assert second == first
    assert "elsewhere:9092" not in second
    assert str(ROOT) not in second and str(Path.home()) not in second
    # a default that names a file of this checkout is written relative to the repository
    assert "`worker/tools/data/a_share_5min.csv`" in second


def test_check_names_a_flag_without_its_line(monkeypatch, capsys):
    """A new flag in a command's parser, docs/FLAGS.md not regenerated: --check fails, naming it."""
    from worker.cli import tail

    original = tail.configure

    def configure(parser):
        original(parser)
        parser.add_argument("--brand-new", help="a flag nobody documented")

    monkeypatch.setattr(tail, "configure", configure)
    problems = flagdoc.check()
    assert "kronos-rt tail --brand-new BRAND_NEW: no line in docs/FLAGS.md" in problems
    assert problems[-1] == "run `python -m worker.cli.flagdoc --write` and commit docs/FLAGS.md"
    assert flagdoc.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "--brand-new" in err and "python -m worker.cli.flagdoc --write" in err


def test_check_passes_and_write_writes(monkeypatch, tmp_path, capsys):
    assert flagdoc.check() == [] and flagdoc.main(["--check"]) == 0
    target = tmp_path / "FLAGS.md"
    monkeypatch.setattr(flagdoc, "TARGET", target)
    assert flagdoc.main(["--write"]) == 0
    assert target.read_text() == FLAGS.read_text()
    assert f"wrote {target}" in capsys.readouterr().out


def test_a_row_carries_flag_variable_default_and_help():
    section = flagdoc._section(FLAGS.read_text(), "kronos-rt worker")
    row = next(ln for ln in section.splitlines() if ln.startswith("| `--max-batch"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[0] == "`--max-batch MAX_BATCH`" and cells[1] == "`KRONOS_RT_MAX_BATCH`"
    assert cells[2] == f"`{Settings(worker_id='w').max_batch}`" and cells[3] == "most windows in one inference batch"
    models = flagdoc._section(FLAGS.read_text(), "kronos-rt models pull")
    assert "| `--tokenizer HUB_ID` | `KRONOS_RT_TOKENIZER` |" in models
