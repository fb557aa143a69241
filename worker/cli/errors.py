"""What `kronos-rt` prints instead of a traceback when a user's set-up is at fault.

explain(exc, args) turns the errors people actually meet (a broker or Redis that does not
answer, a model that is not there, CUDA that is not there, a bad tape, Ctrl-C) into
(exit code, what failed and why, what to do). Anything it does not know is a bug and
keeps its traceback, unless the command declared its class (USAGE_ERRORS / FAILURE_ERRORS in
the command's module: explain's usage and failure arguments). Exit codes: 2 bad flags or
configuration, 1 runtime failure, 130 interrupted. Every `kronos-rt` command's errors go
through here (worker/cli/__init__.py main): commands raise, they do not print errors.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from worker.errors import ConfigError, StartupError, hide_password

USAGE, FAILURE, INTERRUPTED = 2, 1, 130


@dataclass(frozen=True)
class Explained:
    code: int
    what: str
    todo: str | None = None

    def lines(self, command: str) -> list[str]:
        head = f"kronos-rt {command}: error: {self.what}" if command else f"kronos-rt: error: {self.what}"
        return [head] + ([f"  {self.todo}"] if self.todo else [])


def _is(exc: BaseException, module: str, *names: str) -> bool:
    """isinstance against a class of a module that is already imported (never imports it:
    `kronos-rt --help` must not pay for aiokafka or redis)."""
    mod = sys.modules.get(module)
    return mod is not None and any(isinstance(exc, getattr(mod, n, ())) for n in names)


def _where(args, name: str, fallback: str) -> str:
    value = getattr(args, name, None) if args is not None else None
    return hide_password(value) if value else fallback


def explain(exc: BaseException, args=None, usage: tuple = (), failure: tuple = ()) -> Explained | None:
    """usage / failure: classes the command declares as bad input (exit 2, the message) and
    runtime failures (exit 1, type and message) when nothing more specific is known of them."""
    if isinstance(exc, KeyboardInterrupt):
        return Explained(INTERRUPTED, "interrupted (Ctrl-C); everything this command started was stopped")
    if _is(exc, "kronos_rt.training.trainer", "TrainingInterrupted"):  # a checkpoint was written
        return Explained(INTERRUPTED, str(exc), "rerun the same command with --resume to continue")
    if isinstance(exc, ConfigError):
        return Explained(USAGE, str(exc))
    if isinstance(exc, StartupError):
        return Explained(FAILURE, str(exc))
    if _is(exc, "kronos_rt.registry", "RegistryError"):
        if _is(exc.__cause__, "kronos_rt.hub", "HubError"):  # a download that failed: runtime
            return explain(exc.__cause__, args)
        # A version, name or directory the user named that is not there or not valid: the
        # message already says what the registry holds or what to do.
        return Explained(USAGE, str(exc))
    if _is(exc, "kronos_rt.hub", "HubError"):
        what, _, cause = str(exc).partition(" Cause: ")
        return Explained(FAILURE, what, f"cause: {cause}" if cause else None)
    if _is(exc, "kronos_rt.checkpoint", "CheckpointError"):
        return Explained(USAGE, str(exc))
    if isinstance(exc, RuntimeError) and "CUDA is not available" in str(exc):
        return Explained(USAGE, str(exc))
    if _is(exc, "aiokafka.errors", "KafkaError"):
        exc_text = str(exc).removeprefix(f"{type(exc).__name__}: ")
    if _is(exc, "aiokafka.errors", "KafkaConnectionError") or (
            _is(exc, "aiokafka.errors", "KafkaError") and "bootstrap" in str(exc).lower()):
        return Explained(FAILURE, f"cannot reach the Kafka broker at {_where(args, 'brokers', 'the given address')} "
                                  f"({type(exc).__name__}: {exc_text})",
                         "start one (`kronos-rt broker` runs a local one) or point --brokers / "
                         "KRONOS_RT_BROKERS at yours")
    if _is(exc, "aiokafka.errors", "KafkaError"):
        return Explained(FAILURE, f"Kafka: {type(exc).__name__}: {exc_text}")
    if _is(exc, "redis.exceptions", "AuthenticationError", "AuthenticationWrongNumberOfArgsError"):
        return Explained(USAGE, f"Redis at {_where(args, 'redis', 'the given URL')} refused the credentials: {exc}",
                         "put the right user:password in --redis / KRONOS_RT_REDIS (redis://user:pass@host:6379/0)")
    if _is(exc, "redis.exceptions", "ConnectionError", "TimeoutError"):
        return Explained(FAILURE, f"cannot reach Redis at {_where(args, 'redis', 'the given URL')}: {exc}",
                         "start redis-server or point --redis / KRONOS_RT_REDIS at yours")
    if isinstance(exc, FileNotFoundError):
        name = exc.filename or str(exc)
        return Explained(USAGE, f"{name}: no such file or directory", "check the path")
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return Explained(FAILURE, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if usage and isinstance(exc, usage):
        return Explained(USAGE, str(exc))
    if failure and isinstance(exc, failure):
        return Explained(FAILURE, f"{type(exc).__name__}: {exc}")
    return None
