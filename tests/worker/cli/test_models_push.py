"""`kronos-rt models push` and `models pull ORG/NAME --revision vX.Y.Z`, through worker.cli.main,
against tests/fake_hub.py (a local HTTP stand-in for the Hub: the real Hub is not reachable
from the test machines). The pushed version is a real fine-tune with a recorded
walk-forward evaluation, so the card is checked against what metadata.json holds."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path, PurePath

import pytest
from huggingface_hub import constants as hf_constants

from kronos_rt.registry import Registry
from tests.fake_hub import FakeHub
from worker import tools
from worker.cli import main

ROOT = Path(__file__).resolve().parents[3]
PARITY = ROOT / "tests" / "fixtures" / "parity"
TAPE = str(tools.TAPE)
TOKEN = "hf_cliTOKEN9876543210zyxwvuts"


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["models", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """parity@1.0.0, fine-tuned for a few steps into parity@1.0.1, evaluated with --record."""
    root = tmp_path_factory.mktemp("reg")
    reg = Registry(root)
    reg.import_dirs("parity", PARITY / "model", PARITY / "tokenizer", version="1.0.0")
    assert main(["finetune", "--registry", str(root), "--base", "parity@1.0.0", "--data", TAPE, "--name", "parity",
                 "--lookback", "32", "--horizon", "8", "--steps", "4", "--lr", "1e-3", "--batch-size", "8",
                 "--eval-every", "2", "--eval-windows", "8", "--device", "cpu",
                 "--out", str(tmp_path_factory.mktemp("run"))]) == 0
    assert main(["eval", "--registry", str(root), "--model", "parity@1.0.1", "--model", "parity@1.0.0",
                 "--data", TAPE, "--lookback", "32", "--pred-len", "4", "--sample-count", "2", "--stride", "8",
                 "--max-windows", "8", "--device", "cpu", "--no-plots", "--record",
                 "--out", str(tmp_path_factory.mktemp("eval"))]) == 0
    return reg


@pytest.fixture
def hub(monkeypatch, tmp_path):
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)  # plain HTTP transfers
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub(token=TOKEN) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        yield h


@pytest.fixture
def token_file(tmp_path):
    f = tmp_path / "hf-token"
    f.write_text(TOKEN + "\n")
    return f


def test_eval_record_keeps_the_figures_in_metadata(evaluated):
    wf = evaluated.get("parity", "1.0.1").metadata["metrics"]["walk_forward"]
    assert wf["windows"] > 0 and wf["config"]["lookback"] == 32 and wf["config"]["pred_len"] == 4
    assert set(wf["baselines"]) == {"persistence", "drift"} and set(wf["compared_with"]) == {"parity@1.0.0"}
    assert wf["summary"]["mase"] > 0
    assert evaluated.get("parity", "1.0.0").metadata["metrics"]["walk_forward"]["compared_with"].keys() == {"parity@1.0.1"}


def test_dry_run_prints_files_and_card_and_sends_nothing(evaluated, hub, capsys):
    rc, out, err = run(capsys, "--registry", str(evaluated.root), "push", "parity@1.0.1", "--repo", "org/parity",
                       "--dry-run")
    assert rc == 0, err
    assert hub.requests == [] and hub.repos == {}
    mv = evaluated.get("parity", "1.0.1")
    meta = mv.metadata
    for rel, digest in meta["files"].items():  # every file with its size and sha256, in the public layout
        path = rel.removeprefix("model/")
        assert f"{path}  " in out and digest in out
        assert str((mv.path / rel).stat().st_size) in out
    assert 'one commit "kronos-rt models push parity@1.0.1" tagged v1.0.1' in out and "nothing was sent" in out

    card = out.split("--- README.md ---\n", 1)[1]
    ft = meta["finetune"]
    (data_file,) = ft["data"]["files"]
    assert f"| {PurePath(data_file['path']).name} | `{data_file['sha256']}` | {data_file['rows']} |" in card
    assert data_file["start"] in card and data_file["end"] in card
    assert f"| steps | {ft['hyperparameters']['steps']} |" in card and f"| lr | {ft['hyperparameters']['lr']:.6g} |" in card
    assert "Fine-tuned by `kronos-rt finetune` from `parity@1.0.0`." in card
    wf = meta["metrics"]["walk_forward"]
    assert f"| parity@1.0.1 | {wf['summary']['mase']:.6g} |" in card
    assert f"| persistence | {wf['baselines']['persistence']['mase']:.6g} |" in card
    assert f"torch {ft['libraries']['torch']}" in card
    assert "RANDOM WEIGHTS" not in card


def test_push_then_pull_gives_the_same_version(evaluated, hub, token_file, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")  # its debug logs must not show the token either
    rc, out, err = run(capsys, "--registry", str(evaluated.root), "push", "parity@1.0.1", "--repo", "org/parity",
                       "--token-file", str(token_file))
    assert rc == 0, err
    repo = hub.repos["org/parity"]
    commit = repo.tags["v1.0.1"]
    assert f"pushed parity@1.0.1 to org/parity@main: commit {commit}, tag v1.0.1" in out
    assert "kronos-rt models pull org/parity --revision v1.0.1" in out
    assert repo.commits[commit].message == "kronos-rt models push parity@1.0.1"
    # The token reached the Hub as a header, and nothing the user or a log sees.
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests
               if not r.path.startswith("/lfs-upload/"))
    assert caplog.text and TOKEN not in out + err + caplog.text

    other = tmp_path / "other"
    rc, out, err = run(capsys, "--registry", str(other), "pull", "org/parity", "--revision", "v1.0.1")
    # This Hub wants a token for reading too: without one the pull fails, saying where it could not get.
    assert rc == 1 and "cannot get org/parity@v1.0.1 from the Hugging Face Hub" in err
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    rc, out, err = run(capsys, "--registry", str(other), "pull", "org/parity", "--revision", "v1.0.1")
    assert rc == 0, err
    assert "pulled parity@1.0.1" in out
    original, back = evaluated.get("parity", "1.0.1").metadata, Registry(other).get("parity", "1.0.1").metadata
    assert back["files"] == original["files"]
    assert back["finetune"] == original["finetune"] and back["metrics"] == original["metrics"]
    rc, out, _ = run(capsys, "--registry", str(other), "list")
    assert "hub org/parity@v1.0.1" in out
    rc, out, _ = run(capsys, "--registry", str(other), "verify", "parity@1.0.1", "--device", "cpu")
    assert rc == 0 and "verify parity@1.0.1: OK" in out


def test_usage_errors_are_one_line(evaluated, hub, tmp_path, capsys):
    root = str(evaluated.root)
    rc, _, err = run(capsys, "--registry", root, "push", "parity@1.0.1", "--repo", "no-slash", "--dry-run")
    assert rc == 2 and err.strip() == ("kronos-rt models push: error: invalid Hub repo 'no-slash': expected ORG/NAME "
                                       "(letters, digits, '-', '_', '.')")
    rc, _, err = run(capsys, "--registry", root, "push", "parity@9.9.9", "--repo", "org/parity", "--dry-run")
    assert rc == 2 and "parity has no version 9.9.9" in err
    rc, _, err = run(capsys, "--registry", root, "push", "parity@1.0.1", "--repo", "org/parity",
                     "--token-file", str(tmp_path / "absent"))
    assert rc == 2 and "cannot read the token file" in err
    rc, _, err = run(capsys, "--registry", root, "pull", "org/parity", "--tokenizer-revision", "v1")
    assert rc == 2 and "--tokenizer-revision needs --tokenizer" in err
    assert hub.requests == []


def test_the_command_as_users_run_it(evaluated, tmp_path, token_file):
    """A separate process: HF_ENDPOINT from the environment, a fresh HF_HOME (no stored login)."""
    with FakeHub(token=TOKEN) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf-home"),
               "PYTHONPATH": str(ROOT)}
        env.pop("HF_TOKEN", None)
        cmd = [sys.executable, "-m", "worker.cli", "models", "--registry", str(evaluated.root), "push", "parity@1.0.0",
               "--repo", "org/parity-cli"]
        no_token = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=120)
        assert no_token.returncode == 2
        assert no_token.stderr.strip() == ("kronos-rt models push: error: no Hugging Face token: give --token-file "
                                           "FILE, set HF_TOKEN, or log in with `hf auth login`")
        done = subprocess.run(cmd + ["--token-file", str(token_file)], check=False, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert TOKEN not in done.stdout + done.stderr and TOKEN not in " ".join(cmd)
        assert json.loads(hub.repos["org/parity-cli"].resolve("v1.0.0").files["metadata.json"])["version"] == "1.0.0"
