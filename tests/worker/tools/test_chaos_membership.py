"""`kronos-rt chaos --static`: each worker slot has its own --group-instance-id, which the
replacement of a killed or terminated worker reuses, and the worker's own flags take it.
Real processes, short-lived stand-ins for the workers (no broker: the plumbing only)."""
import asyncio
import signal
import sys

from worker.cli import command_parser
from worker.config import from_args
from worker.tools.chaos import WorkerSlot, drill_config, worker_command

TOPICS = {"group": "g", "bars": "b", "forecasts": "f", "dlq": "d"}


def slots(tmp_path, static: bool, calls: list):
    def args_for(worker_id, instance_id):
        calls.append((worker_id, instance_id))
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    return [WorkerSlot(i, args_for, {}, tmp_path, static=static) for i in range(2)]


def test_static_slots_keep_their_instance_id_through_replacements(tmp_path):
    calls = []
    w0, w1 = slots(tmp_path, True, calls)
    try:
        w0.start()
        w1.start()
        w0.replace(signal.SIGKILL)
        w1.replace(signal.SIGTERM)
        w0.replace(signal.SIGTERM)
    finally:
        codes = w0.stop() + w1.stop()
    assert calls == [("chaos-w0-1", "chaos-w0"), ("chaos-w1-1", "chaos-w1"), ("chaos-w0-2", "chaos-w0"),
                     ("chaos-w1-2", "chaos-w1"), ("chaos-w0-3", "chaos-w0")]
    assert len(codes) == 5 and all(c != 0 for c in codes)  # every process of both slots ended by a signal


def test_dynamic_slots_have_no_instance_id(tmp_path):
    calls = []
    w0, _ = slots(tmp_path, False, calls)
    try:
        w0.start()
        w0.replace(signal.SIGKILL)
    finally:
        w0.stop()
    assert calls == [("chaos-w0-1", None), ("chaos-w0-2", None)]


DRAINS = ("import signal, sys, time\n"
          "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), sys.exit(0)))\n"
          "time.sleep(60)")


def test_a_static_replacement_after_sigterm_starts_once_its_predecessor_has_exited(tmp_path):
    seen = []  # (instance id, whether the slot's previous process was still running)

    def args_for(worker_id, instance_id):
        seen.append((instance_id, slot.proc is not None and slot.proc.poll() is None))
        return [sys.executable, "-c", DRAINS]

    slot = WorkerSlot(0, args_for, {}, tmp_path, static=True)
    try:
        slot.start()
        first = slot.proc
        asyncio.run(asyncio.sleep(1.0))  # the stand-in has set its SIGTERM handler
        asyncio.run(slot.replace_when_gone(signal.SIGTERM))
        assert first.returncode == 0  # it drained (0.5 s) and exited before its replacement started
    finally:
        slot.stop()
    assert seen == [("chaos-w0", False), ("chaos-w0", False)]


def test_two_sigterms_on_one_static_slot_replace_one_process_after_the_other(tmp_path):
    alive = []  # processes of the slot running when each new one starts

    def args_for(worker_id, instance_id):
        alive.append(sum(p.poll() is None for p in slot.old + [slot.proc] if p is not None))
        return [sys.executable, "-c", DRAINS]

    async def two_faults():
        await asyncio.sleep(1.0)  # the stand-in has set its SIGTERM handler
        await asyncio.gather(slot.replace_when_gone(signal.SIGTERM), slot.replace_when_gone(signal.SIGTERM))

    slot = WorkerSlot(0, args_for, {}, tmp_path, static=True)
    try:
        slot.start()
        asyncio.run(two_faults())
        procs = slot.old + [slot.proc]
    finally:
        slot.stop()
    # the first, its replacement (hit by the second fault while starting), the replacement's replacement
    assert len(procs) == 3 and alive == [0, 0, 0]


def worker_settings(cmd: list[str]):
    assert cmd[1:4] == ["-m", "worker.cli", "worker"]
    return from_args(command_parser("worker").parse_args(cmd[4:]))


def test_the_worker_command_carries_the_instance_id_to_the_workers_settings():
    common = dict(brokers="localhost:9092", redis="redis://localhost:6379/0", prefix="p", topics=TOPICS,
                  model_args=["--model", "m"], session_timeout_ms=3000, extra=["--max-batch", "8"])
    static = worker_settings(worker_command("chaos-w1-2", group_instance_id="chaos-w1", **common))
    assert (static.worker_id, static.group_instance_id, static.max_batch) == ("chaos-w1-2", "chaos-w1", 8)
    dynamic = worker_settings(worker_command("chaos-w1-2", **common))
    assert "--group-instance-id" not in worker_command("chaos-w1-2", **common)
    assert (dynamic.worker_id, dynamic.group_instance_id) == ("chaos-w1-2", "")


def test_the_static_flag_reaches_the_drill(tmp_path):
    parser = command_parser("chaos")
    on = drill_config(parser.parse_args(["--static", "--seed", "3", "--log-dir", str(tmp_path)]), ("kill9",), run=1)
    assert on.static and on.seed == 4 and on.kinds == ("kill9",) and on.log_dir == str(tmp_path / "seed-4")
    assert not drill_config(parser.parse_args([]), ("kill9",)).static
