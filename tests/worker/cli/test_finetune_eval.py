"""The worked example: fine-tune the parity fixture on the bundled tape, evaluate, promote on evidence.

(A worker on NAME@latest following a promote is the hot-swap mechanism's job, tested in
tests/worker/lifecycle/test_hotswap.py; here: the version passes verify and promote moves latest.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kronos_rt.model import Kronos
from kronos_rt.registry import Registry
from kronos_rt.tokenizer import KronosTokenizer
from worker import tools
from worker.cli import main

ROOT = Path(__file__).resolve().parents[3]
PARITY = ROOT / "tests" / "fixtures" / "parity"
TAPE = str(tools.TAPE)


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """parity@1.0.0 imported and promoted, then fine-tuned for 30 steps into parity@1.0.1."""
    root = tmp_path_factory.mktemp("reg")
    reg = Registry(root)
    reg.import_dirs("parity", PARITY / "model", PARITY / "tokenizer", version="1.0.0")
    rc = main(["finetune", "--registry", str(root), "--base", "parity@1.0.0", "--data", TAPE, "--name", "parity",
               "--lookback", "32", "--horizon", "8", "--steps", "30", "--lr", "1e-3", "--batch-size", "16",
               "--eval-every", "10", "--eval-windows", "32", "--device", "cpu",
               "--out", str(tmp_path_factory.mktemp("run"))])
    return rc, reg


def test_finetune_lowers_val_loss_and_writes_an_unpromoted_version(finetuned):
    rc, reg = finetuned
    assert rc == 0
    assert reg.versions("parity") == ["1.0.0", "1.0.1"]
    assert reg.latest("parity") == "1.0.0"  # never promoted by finetune
    mv = reg.get("parity", "1.0.1")
    ft = mv.metadata["finetune"]
    stage = ft["stages"]["predictor"]
    assert stage["best_val_loss"] < stage["base_val_loss"]
    assert any("eval_loss" in e for e in stage["loss_curve"]) and any("loss" in e for e in stage["loss_curve"])
    assert ft["base"]["spec"] == "parity@1.0.0"
    (f,) = ft["data"]["files"]
    assert f["path"] == TAPE and len(f["sha256"]) == 64 and f["start"] < f["end"]
    assert set(ft["data"]["splits"]) == {"train", "val", "test"}
    assert ft["hyperparameters"]["steps"] == 30 and stage["hyperparameters"]["max_grad_norm"] == 3.0
    assert {"torch", "transformers", "accelerate", "python"} <= ft["libraries"].keys()
    assert ft["wall_s"] > 0 and stage["samples_per_s"] > 0
    # Strict load, and the tokenizer is the base's (predictor stage only).
    Kronos.from_pretrained(mv.model_dir)
    KronosTokenizer.from_pretrained(mv.tokenizer_dir)
    assert (mv.tokenizer_dir / "model.safetensors").read_bytes() == (PARITY / "tokenizer" / "model.safetensors").read_bytes()
    assert reg.verify("parity", "1.0.1").ok


def test_eval_side_by_side_then_promote_on_evidence(finetuned, tmp_path, capsys):
    _, reg = finetuned
    out = tmp_path / "eval"
    rc, stdout, err = run(capsys, "eval", "--registry", str(reg.root), "--model", "parity@1.0.1", "--model",
                          "parity", "--data", TAPE, "--lookback", "32", "--pred-len", "4", "--sample-count", "2",
                          "--stride", "8", "--max-windows", "24", "--device", "cpu", "--out", str(out))
    assert rc == 0, err
    assert "| parity@1.0.1 |" in stdout and "| parity@1.0.0 |" in stdout and "windows/s" in err
    report = json.loads((out / "eval.json").read_text())
    assert set(report["results"]) == {"persistence", "drift", "parity@1.0.1", "parity@1.0.0"}
    assert all((out / n).stat().st_size > 0 for n in ("eval.md", "error_by_step.png", "examples.png"))

    a = report["results"]["parity@1.0.1"]["summary"]["mase"]
    b = report["results"]["parity@1.0.0"]["summary"]["mase"]
    rc, stdout, err = run(capsys, "models", "--registry", str(reg.root), "promote", "parity", "1.0.1",
                          "--if-better-than", "1.0.0", "--on", str(out / "eval.json"))
    if a < b:
        assert rc == 0 and reg.latest("parity") == "1.0.1" and "beats" in stdout
    else:
        assert rc == 1 and reg.latest("parity") == "1.0.0" and "not promoted" in err


def test_promote_if_better_than_follows_the_report(finetuned, tmp_path, capsys):
    _, reg = finetuned
    reg.promote("parity", "1.0.0")
    ev = tmp_path / "eval.json"

    def report(cand, cur):
        ev.write_text(json.dumps({"windows": 10, "results": {"parity@1.0.1": {"summary": {"mase": cand}},
                                                             "parity@1.0.0": {"summary": {"mase": cur}}}}))

    report(1.2, 1.0)
    rc, _, err = run(capsys, "models", "--registry", str(reg.root), "promote", "parity", "1.0.1",
                     "--if-better-than", "1.0.0", "--on", str(ev))
    assert rc == 1 and "not promoted: parity@1.0.1 does not beat parity@1.0.0 on mase: 1.2 vs 1" in err
    assert reg.latest("parity") == "1.0.0"
    report(0.97, 1.0)
    rc, _, err = run(capsys, "models", "--registry", str(reg.root), "promote", "parity", "1.0.1",
                     "--if-better-than", "1.0.0", "--on", str(ev), "--margin", "0.05")
    assert rc == 1 and "margin 0.05" in err
    rc, out, _ = run(capsys, "models", "--registry", str(reg.root), "promote", "parity", "1.0.1",
                     "--if-better-than", "1.0.0", "--on", str(ev), "--margin", "0.01")
    assert rc == 0 and "parity: latest -> 1.0.1" in out
    assert reg.latest("parity") == "1.0.1"
    rc, _, err = run(capsys, "models", "--registry", str(reg.root), "promote", "parity", "1.0.1",
                     "--if-better-than", "1.0.0")
    assert rc == 2 and "go together" in err


def _one_line_error(capsys, *argv) -> tuple[int, str]:
    rc, _, err = run(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return rc, lines[0]


def test_finetune_bad_input_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamps,open,low,close\n2024-01-02 09:30,1,1,1\n")
    common = ["finetune", "--registry", str(tmp_path / "reg"), "--name", "x", "--steps", "1", "--device", "cpu",
              "--out", str(tmp_path / "run")]
    rc, line = _one_line_error(capsys, *common, "--base", str(PARITY), "--data", str(bad))
    assert rc == 2 and "missing columns high" in line
    rc, line = _one_line_error(capsys, *common, "--base", str(PARITY), "--data", TAPE, "--lookback", "300",
                               "--horizon", "100")
    assert rc == 2 and "too few for one window" in line
    # A base whose tokenizer does not fit its model.
    base = tmp_path / "base"
    (base / "model").mkdir(parents=True)
    (base / "tokenizer").mkdir()
    for d in ("model", "tokenizer"):
        for f in ("config.json", "model.safetensors"):
            (base / d / f).write_bytes((PARITY / d / f).read_bytes())
    cfg = json.loads((base / "tokenizer" / "config.json").read_text())
    (base / "tokenizer" / "config.json").write_text(json.dumps({**cfg, "s1_bits": 8}))
    rc, line = _one_line_error(capsys, *common, "--base", str(base), "--data", TAPE)
    assert rc == 2 and "the tokenizer does not fit the model (s1_bits: model 10 vs tokenizer 8)" in line
    # An unknown registry version is a usage error in every command (worker/cli/errors.py): exit 2.
    rc, line = _one_line_error(capsys, *common, "--base", "nosuch@1.0.0", "--data", TAPE)
    assert rc == 2 and "no model named 'nosuch'" in line
    assert line.startswith("kronos-rt finetune: error: ")


@pytest.mark.slow
def test_finetune_from_a_bar_topic(broker, tmp_path, capsys):
    """--from-topic: the topic becomes a tape in OUT/data (invalid messages skipped and counted),
    whose sha256 the new version's metadata records."""
    import asyncio

    from worker.adapters.kafka import ensure_topics, make_producer
    from worker.tools.replay import prepare, replay

    topic = f"ft-bars-{tmp_path.name[-8:]}"
    rows = prepare(TAPE, symbol="600977.SH", limit=400)

    async def feed():
        await ensure_topics(broker, {topic: 2})
        await replay(rows, broker, topic)
        producer = make_producer(broker)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"not json", key=b"X")
        finally:
            await producer.stop()

    asyncio.run(feed())
    root, out = tmp_path / "reg", tmp_path / "run"
    Registry(root).import_dirs("parity", PARITY / "model", PARITY / "tokenizer", version="1.0.0")
    rc, stdout, err = run(capsys, "finetune", "--registry", str(root), "--base", "parity@1.0.0", "--from-topic", topic,
                          "--brokers", broker, "--name", "parity", "--lookback", "32", "--horizon", "8", "--steps", "2",
                          "--batch-size", "8", "--eval-windows", "8", "--device", "cpu", "--out", str(out))
    assert rc == 0, err
    assert "401 messages" in stdout and "400 bars of 1 symbols kept, 1 invalid skipped" in stdout
    tape = out / "data" / f"topic-{topic}.csv"
    meta = Registry(root).resolve("parity@1.0.1").metadata
    files = meta["finetune"]["data"]["files"] if "finetune" in meta else meta["data"]["files"]
    assert [f["path"] for f in files] == [str(tape)]
