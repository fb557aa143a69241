"""Every command's errors go through one printer (worker/cli/errors.py) with one set of exit
codes: 2 bad flags or configuration (an unknown registry version included), 1 runtime failure,
130 interrupted; one line, `kronos-rt COMMAND: error: ...`, no traceback. One case or more for
each command that used to print its own errors (eval, finetune, models, bench, bench-stream)."""
from __future__ import annotations

import pytest

from kronos_rt.registry import Registry
from worker.cli import main
from worker.tools import TAPE

from tests.kronos_rt.conftest import PARITY


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("KRONOS_RT_DEBUG", raising=False)
    monkeypatch.delenv("KRONOS_RT_REGISTRY", raising=False)  # every case names its --registry


def one_line(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return rc, lines[0]


@pytest.fixture
def parity_registry(tmp_path) -> str:
    root = tmp_path / "reg"
    Registry(root).import_dirs("parity", PARITY / "model", PARITY / "tokenizer", version="1.0.0")
    return str(root)


def test_eval(capsys, tmp_path, parity_registry):
    rc, line = one_line(capsys, "eval", "--registry", parity_registry, "--model", "parity@1.0.0", "--data", str(TAPE),
                        "--lookback", "1")
    assert (rc, line) == (2, "kronos-rt eval: error: --lookback must be >= 2")
    rc, line = one_line(capsys, "eval", "--registry", parity_registry, "--model", "parity@2.0.0", "--data", str(TAPE))
    assert (rc, line) == (2, "kronos-rt eval: error: parity has no version 2.0.0 (versions: 1.0.0)")
    rc, line = one_line(capsys, "eval", "--registry", parity_registry, "--model", "parity@1.0.0",
                        "--model", "parity@1.0.0", "--data", str(TAPE))
    assert (rc, line) == (2, "kronos-rt eval: error: the same version is named twice")
    # A run that fails after its start (the output folder cannot be made): runtime, exit 1.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = main(["eval", "--registry", parity_registry, "--model", "parity@1.0.0", "--data", str(TAPE),
               "--lookback", "32", "--pred-len", "2", "--sample-count", "1", "--max-windows", "2", "--device", "cpu",
               "--no-plots", "--out", str(blocker / "out")])
    err = capsys.readouterr().err  # progress lines, then the error
    errors = [line for line in err.splitlines() if "error" in line]
    assert rc == 1 and "Traceback" not in err
    assert errors == [f"kronos-rt eval: error: NotADirectoryError: [Errno 20] Not a directory: '{blocker / 'out'}'"], err


def test_finetune(capsys, tmp_path, monkeypatch, parity_registry):
    common = ["finetune", "--registry", parity_registry, "--name", "x", "--device", "cpu", "--out", str(tmp_path / "run")]
    rc, line = one_line(capsys, *common, "--base", "parity@1.0.0", "--data", str(TAPE), "--steps", "0")
    assert (rc, line) == (2, "kronos-rt finetune: error: --steps must be >= 1")
    rc, line = one_line(capsys, *common, "--base", "parity@1.0.0")
    assert (rc, line) == (2, "kronos-rt finetune: error: no data: give --data PATH... and/or --from-topic TOPIC")
    rc, line = one_line(capsys, *common, "--base", "parity@9.9.9", "--data", str(TAPE), "--steps", "1")
    assert (rc, line) == (2, "kronos-rt finetune: error: parity has no version 9.9.9 (versions: 1.0.0)")

    # Ctrl-C during training: a checkpoint is written, exit 130 and say how to go on.
    from kronos_rt.training import finetune as finetune_module
    from kronos_rt.training.trainer import StageResult, TrainingInterrupted

    def interrupted(*a, **kw):
        raise TrainingInterrupted(StageResult("predictor", "out", 3, None, None, None, checkpoint_dir="run/ckpt"))

    monkeypatch.setattr(finetune_module, "finetune", interrupted)
    rc = main([*common, "--base", "parity@1.0.0", "--data", str(TAPE), "--steps", "5"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 130
    assert lines == ["kronos-rt finetune: error: predictor training stopped at step 3; checkpoint in run/ckpt",
                     "  rerun the same command with --resume to continue"]


def test_finetune_from_an_unreachable_broker_is_a_runtime_failure(capsys, tmp_path, parity_registry):
    from worker.tools.services import free_port

    where = f"127.0.0.1:{free_port()}"
    rc, line = one_line(capsys, "finetune", "--registry", parity_registry, "--name", "x", "--base", "parity@1.0.0",
                        "--from-topic", "bars", "--brokers", where, "--out", str(tmp_path / "run"))
    assert rc == 1 and line.startswith(f"kronos-rt finetune: error: reading topic 'bars' from {where}: "), line


def test_models(capsys, parity_registry):
    rc, line = one_line(capsys, "models", "--registry", parity_registry, "promote", "parity", "1.0.0",
                        "--if-better-than", "0.9.0")
    assert (rc, line) == (2, "kronos-rt models promote: error: --if-better-than and --on go together")
    rc, line = one_line(capsys, "models", "--registry", parity_registry, "verify", "parity@2.0.0")
    assert (rc, line) == (2, "kronos-rt models verify: error: parity has no version 2.0.0 (versions: 1.0.0)")
    rc, line = one_line(capsys, "models", "--registry", parity_registry, "init", "--shape", "mini", "--name", "parity",
                        "--version", "1.0.0")
    assert rc == 2 and line.startswith("kronos-rt models init: error: parity@1.0.0 already exists"), line


def test_models_pull_without_the_hub_is_a_runtime_failure(capsys, monkeypatch, tmp_path):
    """A registry error caused by the Hub (offline, no cache) is a runtime failure, said as the
    worker says a Hub failure: what failed, then its cause."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    rc = main(["models", "--registry", str(tmp_path / "reg"), "pull", "NeoQuasar/Kronos-mini",
               "--tokenizer", "NeoQuasar/Kronos-Tokenizer-2k"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and "Traceback" not in err
    assert len(lines) == 2 and lines[0].startswith("kronos-rt models pull: error: ") and "HF_HUB_OFFLINE" in err, err
    assert lines[1].startswith("  cause: "), err


def test_bench(capsys):
    import torch

    threads = torch.get_num_threads()  # `kronos-rt bench` sets the torch thread count first
    try:
        _bench_errors(capsys)
    finally:
        torch.set_num_threads(threads)


def _bench_errors(capsys):
    rc, line = one_line(capsys, "bench", "--shapes", "huge", "--device", "cpu")
    assert (rc, line) == (2, "kronos-rt bench: error: unknown shape 'huge'; choose from ['base', 'mini', 'small']")
    rc, line = one_line(capsys, "bench", "--shapes", "mini", "--device", "cpu", "--repeats", "0")
    assert (rc, line) == (2, "kronos-rt bench: error: --repeats and --naive-repeats must be >= 1")


def test_bench_stream(capsys):
    rc, line = one_line(capsys, "bench-stream", "--symbols", "0")
    assert (rc, line) == (2, "kronos-rt bench-stream: error: --bursts and --symbols must be >= 1, --warmup-bursts >= 0")


UNKNOWN_CALENDAR = ("unknown session calendar 'nyse_x': use continuous, ashare, us or an exchange code such as "
                    "XSHG, XHKG, XNYS, XLON; `kronos-rt calendars` lists the valid codes")


@pytest.mark.parametrize("command, flag, value, why", [
    ("worker", "--sessions", "*.SH=ashare,nyse_x", UNKNOWN_CALENDAR),
    ("serve", "--sessions", "*.SH=XSHG,*=XXXX", UNKNOWN_CALENDAR.replace("nyse_x", "XXXX")),
    ("worker", "--calibration-groups", "*.SH=sh,=us", "empty symbol pattern in calibration group entry '=us'"),
])
def test_symbol_maps_are_checked_before_anything_starts(capsys, command, flag, value, why):
    # No broker, Redis or model is looked for: the flag is refused first, exit 2, one line.
    rc, line = one_line(capsys, command, flag, value)
    assert (rc, line) == (2, f"kronos-rt {command}: error: {flag} {value!r}: {why}")


def test_calendar_range_and_the_calendars_command_refuse_bad_input_in_one_line(capsys):
    rc, line = one_line(capsys, "worker", "--calendar-range", "2030")
    assert (rc, line) == (2, "kronos-rt worker: error: --calendar-range: calendar range '2030' must be START:END "
                             "dates (either side may be empty)")
    rc, line = one_line(capsys, "calendars", "XNYS", "nyse_x")
    assert (rc, line) == (2, f"kronos-rt calendars: error: {UNKNOWN_CALENDAR}")
    rc, line = one_line(capsys, "calendars", "--date", "2024-02-30")
    assert (rc, line) == (2, "kronos-rt calendars: error: --date '2024-02-30' must be YYYY-MM-DD")
