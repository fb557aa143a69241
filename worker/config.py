"""Settings of `kronos-rt worker`: one dataclass, its command-line flags, and their
environment fallbacks (`--max-batch` <- KRONOS_RT_MAX_BATCH), plus model resolution."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from worker.adapters import security
from worker.errors import ConfigError
from worker.adapters.security import KafkaSecurity
from worker.calendars.sessions import calibration_groups as read_calibration_groups, parse_session_map, parse_span

ENV_PREFIX = "KRONOS_RT_"


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def apply_env(parser: argparse.ArgumentParser, environ=None) -> argparse.ArgumentParser:
    """Let every --long-flag of `parser` (and of its sub-commands) default to KRONOS_RT_<FLAG>,
    and say so in its help: one naming rule for every `kronos-rt` command, whoever added
    the flag. Idempotent; a command line flag still wins over the environment."""
    env = os.environ if environ is None else environ
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                apply_env(sub, env)
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or getattr(action, "_krt_env", False) or action.dest in ("help", "version"):
            continue
        action._krt_env = True
        name = env_name(longs[0])
        shown = action.default
        value = env.get(name)
        # A SUPPRESS default marks a second copy of a flag (`models --registry X list` and
        # `models list --registry X`): the environment feeds the first copy only, else it would
        # overwrite a value given on the command line before the action.
        if value is not None and action.default is not argparse.SUPPRESS:
            if action.nargs == 0:  # store_true / store_const: a switch
                if value.strip().lower() in _TRUE:
                    action.default = action.const
                elif value.strip().lower() not in _FALSE:
                    raise ConfigError(f"{name}={value!r}: use 1/true/yes or 0/false/no")
            else:  # argparse converts string defaults with the flag's type when it parses
                if action.choices is not None and value not in [str(c) for c in action.choices]:
                    raise ConfigError(f"{name}={value!r}: choose from {', '.join(map(str, action.choices))}")
                action.default = value
            action.required = False
        text = action.help or ""
        if text == argparse.SUPPRESS:
            continue
        if "default" in text.rpartition("(")[2] and text.rstrip().endswith(")"):
            action.help = text.rstrip()[:-1] + f"; env {name})"
        elif "default" in text.lower():  # the text says it already, in its own words
            action.help = f"{text} (env {name})"
        elif not any(shown is x for x in (None, False, argparse.SUPPRESS)) and shown != "" and action.nargs != 0:
            action.help = f"{text} (default: {str(shown).replace('%', '%%')}; env {name})".lstrip()
        else:
            action.help = f"{text} (env {name})".lstrip()
    return parser


def parse_interval(text: str) -> _dt.timedelta:
    """'5m', '300s', '1h', '1d' or plain seconds -> timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text).lower())
    if not m:
        raise ConfigError(f"bad interval {text!r}: use e.g. 30s, 5m, 1h, 1d")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    seconds = float(m.group(1)) * unit
    if seconds <= 0:
        raise ConfigError(f"interval must be positive, got {text!r}")
    return _dt.timedelta(seconds=seconds)


def parse_duration_or_off(text: str) -> _dt.timedelta | None:
    """Like parse_interval, but '0', 'off' or '' mean no limit (None)."""
    if str(text).strip().lower() in ("", "0", "off", "none"):
        return None
    return parse_interval(text)


def parse_quantiles(text: str | tuple) -> tuple[float, ...]:
    if isinstance(text, tuple):
        return text
    try:
        levels = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"quantiles {text!r}: use comma-separated levels in (0, 1), e.g. 0.1,0.5,0.9") from None
    for q in levels:
        if not 0 < q < 1:
            raise ConfigError(f"quantile levels must be in (0, 1), got {q}")
    return levels


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Settings:
    brokers: str = "127.0.0.1:9092"
    group: str = "kronos-rt"
    bars_topic: str = "bars.5m"
    forecasts_topic: str = "forecasts.5m"
    dlq_topic: str = "bars.dlq"
    redis: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "krt"
    model: str = "NeoQuasar/Kronos-small"
    tokenizer: str = "auto"
    registry: str = ""
    lookback: int = 400
    min_history: int = 64
    pred_len: int = 12
    max_context: int = 512
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    sample_count: int = 1
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    max_batch: int = 64
    max_wait_ms: float = 5.0
    device: str = "auto"
    dtype: str = "auto"
    inference: str = "thread"
    engine_threads: int = 0
    metrics_port: int = 9100
    interval: str = "5m"
    sessions: str = "continuous"
    calendar_range: str = ""
    worker_id: str = field(default_factory=default_worker_id)
    max_queue: int = 4096
    drain_timeout_s: float = 20.0
    session_timeout_ms: int = 10000
    group_instance_id: str = ""
    fetch_max_wait_ms: int = 100
    commit_interval_ms: int = 200
    seed: int | None = None
    model_poll_s: float = 5.0
    startup_timeout_s: float = 0.0
    max_future_skew: str = "1d"
    max_past_age: str = "0"
    metrics_host: str = "0.0.0.0"
    # TLS/SASL towards the brokers: the --security-protocol, --sasl-*, --ssl-* flags (worker/adapters/security.py)
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    # forecast quality (worker/quality/live.py)
    scores_topic: str = ""
    calibration_window: int = -1  # -1: DEFAULT_WINDOW when --sample-count > 1 (sampled bands), else 0
    calibration_gamma: float = 0.3
    calibration_min_scores: int = 20
    calibration_groups: str = "*=all"
    calibration_per_symbol: int = 0
    # shadow models (worker/lifecycle/shadow.py): candidates run on the same windows after the primary
    shadow: str = ""
    shadow_max_queue: int = 64
    # HTTP API (worker/http): ad-hoc forecasts on the same engine, behind the stream
    http_port: int = -1
    http_host: str = "127.0.0.1"
    api_token: str = ""
    http_max_queue: int = 256
    http_max_bars: int = 2048
    http_max_pred_len: int = 256
    http_max_series: int = 64
    http_max_body_kb: int = 8192
    http_timeout_s: float = 30.0
    http_strict: int = 1
    http_cors: str = ""

    @property
    def interval_td(self) -> _dt.timedelta:
        return parse_interval(self.interval)

    def bar_policy(self, calendar_for=None):
        """The value policy bars must pass before they reach Redis (worker/contracts/events.py BarPolicy)."""
        from worker.contracts.events import BarPolicy

        return BarPolicy(self.interval_td, parse_interval(self.max_future_skew),
                         parse_duration_or_off(self.max_past_age), calendar_for)

    def __post_init__(self):
        self.quantiles = parse_quantiles(self.quantiles)
        if self.min_history < 1 or self.lookback < self.min_history:
            raise ConfigError("need 1 <= --min-history <= --lookback")
        if self.pred_len < 1 or self.max_batch < 1 or self.max_queue < self.max_batch:
            raise ConfigError("need --pred-len >= 1, --max-batch >= 1 and --max-queue >= --max-batch")
        if self.inference not in ("thread", "process"):
            raise ConfigError(f"--inference must be thread or process, got {self.inference!r}")
        if self.engine_threads < 0:
            raise ConfigError(f"--engine-threads must be >= 0 (0: one per core but one), got {self.engine_threads}")
        parse_interval(self.interval)
        parse_interval(self.max_future_skew)
        parse_duration_or_off(self.max_past_age)
        if self.calibration_window < 0:
            # Raw sampled bands of Kronos cover far less than their nominal level (BENCHMARKS.md):
            # wherever sample paths make bands, calibrated ones go out beside them by default.
            from worker.quality.calibration import DEFAULT_WINDOW

            self.calibration_window = DEFAULT_WINDOW if self.sample_count > 1 else 0
        self._check_symbol_maps()
        self._check_http()
        self._check_redis()

    def _check_redis(self) -> None:
        # A URL of an unknown form, or a prefix that would split a script's keys over Cluster
        # slots, stops the command here in one line, not in redis-py at the first bar.
        from worker.adapters import redis_connect
        from worker.adapters.keys import RedisKeys

        redis_connect.parse(self.redis)
        redis_connect.check_slots(RedisKeys(self.redis_prefix).script_layouts())

    def _check_symbol_maps(self) -> None:
        # Read once here so a typo stops the command with its flag named, not mid-start-up.
        try:
            parse_span(self.calendar_range)
        except ValueError as exc:
            raise ConfigError(f"--calendar-range: {exc}") from None
        try:  # each calendar is built here, once per process; bars of --interval must fit in its sessions
            for cal in parse_session_map(self.sessions, self.calendar_range).values:
                cal.check_interval(self.interval_td)
        except ValueError as exc:
            raise ConfigError(f"--sessions {self.sessions!r}: {exc}") from None
        for flag, spec, read in (("--calibration-groups", self.calibration_groups, read_calibration_groups),):
            try:
                read(spec)
            except ValueError as exc:
                raise ConfigError(f"{flag} {spec!r}: {exc}") from None

    def _check_http(self) -> None:
        if not -1 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port must be -1 (off), 0 (any free port) or 1-65535, got {self.http_port}")
        for name in ("http_max_queue", "http_max_bars", "http_max_pred_len", "http_max_series", "http_max_body_kb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.http_timeout_s > 0:
            raise ConfigError(f"--http-timeout-s must be > 0, got {self.http_timeout_s}")
        if self.http_strict not in (0, 1):
            raise ConfigError(f"--http-strict must be 0 or 1, got {self.http_strict}")
        if self.http_port >= 0 and self.pred_len > self.http_max_pred_len:
            raise ConfigError(f"--pred-len {self.pred_len} is over --http-max-pred-len {self.http_max_pred_len}: "
                              "requests without pred_len would all be refused")


# flag help, in the order --help lists them; the type and default come from Settings.
HELP = {
    "brokers": "Kafka bootstrap servers, comma separated",
    "group": "consumer group; workers in one group split the bar partitions",
    "bars_topic": "input topic of bar.v1 events (key = symbol)",
    "forecasts_topic": "output topic of forecast.v1 messages (key = symbol)",
    "dlq_topic": "dead-letter topic for invalid events (original key/value, error.* and source.* headers)",
    "redis": "Redis URL holding the rolling windows: redis://host:port/db, "
             "redis+sentinel://host:port[,host:port...]/MASTER_NAME[/db], redis+cluster://host:port[,host:port...] "
             "(rediss... for TLS; docs/REDIS.md)",
    "redis_prefix": "prefix of every Redis key the worker writes",
    "model": "Kronos model: a local directory, a Hugging Face hub id, or NAME@VERSION from the model registry",
    "tokenizer": "Kronos tokenizer: a local directory, a Hugging Face hub id, or NAME@VERSION; auto = the "
                 "registry version's own tokenizer, else NeoQuasar/Kronos-Tokenizer-base (-2k for Kronos-mini)",
    "registry": "model registry root for NAME@VERSION specs (default ~/.kronos-rt/registry). "
                "With --model NAME@latest the worker follows promotions and rollbacks (and SIGHUP) without stopping",
    "model_poll_s": "how often a --model NAME@latest worker checks the registry for a new latest version",
    "lookback": "bars kept per symbol and fed to the model",
    "min_history": "bars a symbol needs before it is forecast",
    "pred_len": "future bars forecast each time",
    "max_context": "model context length; longer windows are cut to the newest bars",
    "temperature": "sampling temperature",
    "top_k": "top-k sampling (0 = off, 1 = greedy)",
    "top_p": "nucleus sampling threshold",
    "sample_count": "sampled paths per forecast; mean and quantiles are taken over them",
    "quantiles": "quantile levels reported when --sample-count > 1, comma separated",
    "max_batch": "most windows in one inference batch",
    "max_wait_ms": "longest a ready window waits for its batch to fill",
    "device": "torch device: auto (cuda:0 if available, else cpu), cpu, cuda:N",
    "dtype": "inference dtype: auto (float16 on cuda, float32 on cpu), float32, float16, bfloat16",
    "inference": "where the engine computes: thread (the worker's inference thread, sharing the GIL with the "
                 "event loop) or process (a child process of its own, restarted if it dies: the event loop's "
                 "work then no longer slows the engine's, see docs/HOT_PATH.md)",
    "engine_threads": "torch threads the engine computes with (in its process with --inference process, else "
                      "process-wide); 0: one per core but one, which the event loop needs (1 on a 2-core machine: "
                      "a thread per core there stalls the engine whenever the loop runs, see docs/HOT_PATH.md)",
    "metrics_port": "port of /metrics, /healthz and /readyz (0 = pick a free one)",
    "interval": "bar interval, e.g. 5m, 1h",
    "sessions": "trading calendar per symbol: SYMBOL_GLOB=CODE,... (first match wins; unmatched symbols trade "
                "continuously), CODE = continuous (24/7), an exchange code such as XSHG, XSHE, XHKG, XNYS, XNAS, "
                "XLON, XTKS (`kronos-rt calendars` lists them), ashare (= XSHG) or us (= XNYS). Holidays, early "
                "closes and lunch breaks follow the exchange (docs/CALENDARS.md)",
    "calendar_range": "dates the exchange calendars are built for, START:END (YYYY-MM-DD; an empty side keeps "
                      "the library's own span, about 20 years back to 1 year ahead, within the years it records); "
                      "bar times past it follow the weekday rule with a warning "
                      "(kronos_rt_calendar_fallbacks_total) (default: the library's span)",
    "worker_id": "name of this worker in forecasts and logs",
    "max_queue": "ready windows queued before the worker pauses its partitions (backpressure)",
    "drain_timeout_s": "on SIGTERM/SIGINT, how long to finish queued forecasts and commit before exiting",
    "session_timeout_ms": "consumer-group session timeout: how soon a dead worker's partitions move",
    "group_instance_id": "static group membership: a stable id per worker (e.g. the pod name); a worker that "
                         "restarts with it within --session-timeout-ms gets its partitions back without a "
                         "rebalance, so the others never stop (default: none, dynamic membership)",
    "fetch_max_wait_ms": "longest the broker may hold a fetch when no bars are waiting (idle polling vs latency)",
    "commit_interval_ms": "how often acknowledged offsets are committed",
    "seed": "random seed for sampling (default: none)",
    "max_future_skew": "dead-letter bars (future_ts) dated more than this after their Kafka message timestamp; "
                       "a ts without UTC offset is compared as if UTC, so keep it above your zone's offset",
    "max_past_age": "dead-letter bars (stale_ts) dated more than this before their Kafka message timestamp "
                    "(0 = off: replays of history carry old bars)",
    "metrics_host": "bind address of the metrics server (/metrics, /healthz, /readyz)",
    "startup_timeout_s": "how long to wait at start-up for the broker and Redis to answer before exiting "
                         "(0 = wait forever; /readyz says 503 meanwhile)",
    "scores_topic": "output topic of score.v1 events: each forecast step scored against the realized close "
                    "(key = symbol; empty = off)",
    "calibration_window": "recent scores per horizon step behind the calibrated bands (calibrated_quantiles "
                          "in forecasts; 0 = off) (default: 256 when --sample-count > 1, else 0)",
    "calibration_gamma": "coverage integrator gain (per miss, in window spreads, divided by sqrt(step)): "
    "how fast the calibrated bands react to missed coverage",
    "calibration_min_scores": "scores a horizon step needs before its calibrated band is published",
    "calibration_groups": "calibration pools: SYMBOL_GLOB=GROUP,... (first match wins; others pool as 'all')",
    "calibration_per_symbol": "a symbol uses its own calibration once it has this many scores per step "
                              "(0 = pools only)",
    "shadow": "candidate model NAME@VERSION run on the same windows after the primary, forecasts to "
              "<forecasts-topic>.shadow and scored alike; repeat the flag for several (env: comma separated). "
              "Best effort: skipped, never waited for, when the primary is busy",
    "shadow_max_queue": "shadow windows are skipped (and counted) while more stream windows than this wait "
                        "for the primary, or more than this wait for the shadows",
    "http_port": "port of the HTTP forecast API in this process (-1 = off, 0 = pick a free one)",
    "http_host": "bind address of the HTTP API (0.0.0.0 to serve other machines)",
    "api_token": "bearer token the HTTP API requires (empty = no auth; prefer the env variable to the flag)",
    "http_max_queue": "HTTP series waiting for the engine before requests get 429",
    "http_max_bars": "most bars per HTTP series",
    "http_max_pred_len": "largest pred_len an HTTP request may ask for",
    "http_max_series": "most series in one /v1/forecast:batch request",
    "http_max_body_kb": "largest HTTP request body, KiB (413 beyond)",
    "http_timeout_s": "longest an HTTP request waits for the engine before a 503",
    "http_strict": "1 = unknown fields in HTTP requests are errors, 0 = ignored",
    "http_cors": "origins allowed to call the HTTP API from a browser, comma separated (empty = CORS off)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _AppendOverEnv(argparse.Action):
    """A repeatable flag whose first use on the command line replaces the environment's value."""

    def __call__(self, parser, namespace, values, option_string=None):
        cur = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, (cur if isinstance(cur, list) else []) + [values])


def add_flags(parser: argparse.ArgumentParser, names=None) -> None:
    """One flag per Settings field named (default: every field but kafka_security, in field
    order), typed from the field's default, with HELP's text and the default said once. Each
    defaults to None, so fields left unset keep the dataclass default. The worker and
    `kronos-rt serve` (a subset) build their flags here."""
    defaults = Settings(worker_id="hostname-pid")
    known = [f.name for f in dataclasses.fields(Settings) if f.name != "kafka_security"]
    for name in known if names is None else names:
        if name not in known:
            raise ValueError(f"no Settings field {name!r} to make a flag of")
        if name == "shadow":  # repeatable; the environment gives a comma-separated list
            parser.add_argument("--shadow", dest="shadow", action=_AppendOverEnv, default=None,
                                metavar="NAME@VERSION", help=HELP["shadow"])
            continue
        default = getattr(defaults, name)
        shown = ",".join(str(q) for q in default) if name == "quantiles" else default
        kind = int if name == "seed" else {int: int, float: float}.get(type(default), str)
        parser.add_argument(_flag(name), dest=name, type=kind, default=None, metavar=name.upper(),
                            help=HELP[name] if "(default" in HELP[name] else f"{HELP[name]} (default: {shown})")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add one flag per Settings field; each defaults to its KRONOS_RT_* variable, then to the built-in default."""
    add_flags(parser)
    security.add_args(parser)
    apply_env(parser)  # KRONOS_RT_<FLAG> for each, named in its help


def from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags; flags left unset keep the dataclass defaults.
    (argparse applies each flag's type to string defaults, so env values arrive typed.)"""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
             if getattr(args, f.name, None) is not None and f.name != "kafka_security"}
    if isinstance(given.get("shadow"), list):
        given["shadow"] = ",".join(given["shadow"])
    return Settings(**given, kafka_security=security.from_args(args))


# ---------------------------------------------------------------- model resolution

@dataclass(frozen=True)
class ModelRef:
    location: str   # what from_pretrained() gets: a directory or a hub id
    name: str       # reported in forecasts and model_info
    version: str
    revision: str | None = None  # hub revision passed to from_pretrained
    random_weights: bool = False  # a registry version made by `models init`: forecasts mean nothing


def _registry_ref(spec: str, kind: str, root: str | None) -> ModelRef:
    from kronos_rt.registry import Registry, RegistryError

    try:
        mv = Registry(root or None).resolve(spec)
    except RegistryError as exc:
        raise ConfigError(f"model {spec!r}: {exc}") from exc
    return ModelRef(str(mv.model_dir if kind == "model" else mv.tokenizer_dir), mv.name, mv.version,
                    random_weights=mv.random_weights)


def is_registry_spec(spec: str) -> bool:
    name, at, _ = str(spec).partition("@")
    return bool(at) and "/" not in name and not Path(spec).expanduser().is_dir()


def resolve_model(spec: str, kind: str = "model", registry: str | None = None) -> ModelRef:
    """A model (or tokenizer, kind="tokenizer") spec -> where to load it from and how to name it.

    Directory: name = directory name, version = a short hash of its files' sizes and
    mtimes (cheap, changes when the checkpoint is replaced). Hub id ("org/name", optional
    "@revision"): loaded by from_pretrained. NAME@VERSION or NAME@latest: the model registry
    (its model/ or tokenizer/ folder).
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelRef(str(path), path.resolve().name, _dir_version(path))
    if is_registry_spec(spec):
        return _registry_ref(spec, kind, registry)
    name, _, version = spec.partition("@")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", name):
        return ModelRef(name, name, version or "main", version or None)
    raise ConfigError(f"model {spec!r} is neither a directory, a hub id (org/name) nor NAME@VERSION "
                      "(`kronos-rt models list` shows the registry)")


def engine_threads(requested: int) -> int:
    """--engine-threads, 0 resolved: the cores this process may use, less one for the event loop
    (at least 1). torch's own default, a thread per core, oversubscribes the machine as soon as
    the loop runs beside the engine, and its threads then wait on each other."""
    if requested > 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) - 1)


def tokenizer_spec(settings: "Settings") -> str:
    """--tokenizer auto: the registry version's own tokenizer, else the public one that goes with the model."""
    if settings.tokenizer not in ("", "auto"):
        return settings.tokenizer
    if is_registry_spec(settings.model):
        return settings.model
    return "NeoQuasar/Kronos-Tokenizer-2k" if "mini" in settings.model.lower() else "NeoQuasar/Kronos-Tokenizer-base"


def _dir_version(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(path.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]
