"""`kronos-rt models` round trips through worker.cli.main."""
from __future__ import annotations

import json
from pathlib import Path

from worker.cli import main

PARITY = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "parity"
MODEL, TOKENIZER = str(PARITY / "model"), str(PARITY / "tokenizer")


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["models", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_round_trip(tmp_path, capsys):
    root = str(tmp_path / "reg")
    rc, out, _ = run(capsys, "--registry", root, "list")
    assert rc == 0 and "is empty" in out

    rc, out, _ = run(capsys, "--registry", root, "import", "parity", MODEL, TOKENIZER)
    assert rc == 0
    assert "imported parity@0.1.0" in out and "latest -> 0.1.0" in out
    # --registry after the action works too.
    rc, out, _ = run(capsys, "import", "parity", MODEL, TOKENIZER, "--version", "1.0.0", "--registry", root)
    assert rc == 0 and "imported parity@1.0.0" in out

    rc, out, _ = run(capsys, "--registry", root, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "LATEST", "CREATED", "SOURCE", "NOTE"]
    rows = [line.split() for line in lines[1:]]
    assert [r[:3] for r in rows] == [["parity", "0.1.0"] + rows[0][2:3], ["parity", "1.0.0", "*"]]
    assert rows[0][2] != "*"  # only 1.0.0 is latest

    rc, out, _ = run(capsys, "--registry", root, "rollback", "parity")
    assert rc == 0 and "parity: latest -> 0.1.0 (rolled back)" in out
    rc, out, _ = run(capsys, "--registry", root, "promote", "parity", "1.0.0")
    assert rc == 0 and "parity: latest -> 1.0.0" in out

    rc, out, _ = run(capsys, "--registry", root, "verify", "parity@0.1.0", "--device", "cpu")
    assert rc == 0
    assert "verify parity@0.1.0: OK" in out
    for check in ("checksums", "compatibility", "load", "canary"):
        assert check in out
    assert "peak RSS" in out

    rc, out, _ = run(capsys, "--registry", root, "verify", "parity", "--device", "cpu", "--json")
    report = json.loads(out)
    assert rc == 0 and report["ok"] and report["version"] == "1.0.0"


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_failures_exit_nonzero_with_a_message(tmp_path, capsys):
    """A name, version or directory that is not there or not valid (RegistryError) is a usage
    error: exit 2 and one line from the shared printer (worker/cli/errors.py), as in every command."""
    root = str(tmp_path / "reg")
    rc, _, err = run(capsys, "--registry", root, "import", "m", MODEL, str(tmp_path / "missing"))
    assert rc == 2 and "kronos-rt models import: error: tokenizer directory" in err and "does not exist" in err
    assert _one_line(err).startswith("kronos-rt models import: error: tokenizer directory")

    rc, _, err = run(capsys, "--registry", root, "import", "m", MODEL, TOKENIZER, "--version", "1.0")
    assert rc == 2 and "invalid version '1.0'" in err
    assert _one_line(err).startswith("kronos-rt models import: error: invalid version '1.0'")

    run(capsys, "--registry", root, "import", "m", MODEL, TOKENIZER)
    rc, _, err = run(capsys, "--registry", root, "rollback", "m")
    assert rc == 2 and "cannot roll back m" in err
    assert _one_line(err) == "kronos-rt models rollback: error: cannot roll back m: 0.1.0 is its oldest version"
    rc, _, err = run(capsys, "--registry", root, "promote", "m", "9.0.0")
    assert rc == 2 and "m has no version 9.0.0" in err
    assert _one_line(err) == "kronos-rt models promote: error: m has no version 9.0.0 (versions: 0.1.0)"
    rc, _, err = run(capsys, "--registry", root, "verify", "nothing")
    assert rc == 2 and "no model named 'nothing'" in err
    assert _one_line(err) == f"kronos-rt models verify: error: no model named 'nothing' in registry {root} (known: m)"

    # A corrupt file makes verify exit 1 and name the file.
    weights = Path(root) / "m" / "0.1.0" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    rc, out, _ = run(capsys, "--registry", root, "verify", "m", "--device", "cpu")
    assert rc == 1
    assert "verify m@0.1.0: FAILED" in out and "model/model.safetensors: sha256 mismatch" in out


def test_init_is_flagged_random(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KRONOS_RT_REGISTRY", str(tmp_path / "envreg"))
    rc, out, _ = run(capsys, "init", "--shape", "mini", "--seed", "1")
    assert rc == 0 and "created kronos-mini-random@0.1.0" in out and "RANDOM WEIGHTS" in out
    rc, out, _ = run(capsys, "list")
    assert "random-init mini seed=1" in out and "random weights" in out
    meta = json.loads((tmp_path / "envreg" / "kronos-mini-random" / "0.1.0" / "metadata.json").read_text())
    assert meta["random_weights"] is True
