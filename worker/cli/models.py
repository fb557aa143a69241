"""`kronos-rt models`: manage the local model registry (kronos_rt.registry).

    kronos-rt models list
    kronos-rt models import NAME MODEL_DIR TOKENIZER_DIR [--version V]
    kronos-rt models pull HUB_ID --tokenizer HUB_ID [--name N] [--revision R]
    kronos-rt models pull ORG/NAME [--revision vX.Y.Z]          (a repo `models push` wrote)
    kronos-rt models push NAME@VERSION --repo ORG/NAME [--private] [--revision BRANCH] [--token-file F] [--dry-run]
    kronos-rt models init --shape mini|small|base [--seed S] [--name N]
    kronos-rt models promote NAME VERSION [--if-better-than VERSION --on EVAL.json [--metric M --margin F]]
    kronos-rt models rollback NAME
    kronos-rt models verify NAME[@VERSION]
    kronos-rt models compare NAME@A NAME@B [--brokers B --scores-topic T | --from SCORES.jsonl] [--json]

--registry ROOT (before or after the action) overrides $KRONOS_RT_REGISTRY / ~/.kronos-rt/registry.
Exit codes: 0 ok, 1 failure (including a failed verify or a promote the evidence refuses),
2 usage error (including a name, version or directory that is not there or not valid).
"""
from __future__ import annotations

import argparse
import json
import sys

from kronos_rt.registry import ModelVersion, Registry, VerifyReport
from worker.errors import ConfigError
from worker.tools.tables import format_columns

# Errors are printed by worker/cli/errors.py: a RegistryError (a name, version or directory
# that is not there or not valid), a CheckpointError and a ValueError (promote --if-better-than:
# an unknown metric, a report without the versions, bad JSON) exit 2; other failures exit 1.
USAGE_ERRORS = (ValueError,)
FAILURE_ERRORS = (OSError, RuntimeError)


def _add_registry_flag(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--registry", metavar="ROOT", default=default,
                        help="registry root (default: $KRONOS_RT_REGISTRY or ~/.kronos-rt/registry)")


def _add_promote_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--promote", dest="promote", action="store_true", default=None,
                   help="make it `latest` even if it is not the newest version")
    g.add_argument("--no-promote", dest="promote", action="store_false",
                   help="leave `latest` where it is (default: the newest version becomes latest)")


def configure(parser: argparse.ArgumentParser) -> None:
    _add_registry_flag(parser, None)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        # SUPPRESS: given after the action it overrides the global flag, absent it leaves it alone.
        _add_registry_flag(p, argparse.SUPPRESS)
        return p

    action("list", "list the models and versions in the registry")

    p = action("import", "copy a local model + tokenizer checkpoint in as a new version")
    p.add_argument("name")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("tokenizer_dir", metavar="TOKENIZER_DIR")
    p.add_argument("--version", help="semantic version (default: next patch after the newest, or 0.1.0)")
    _add_promote_flags(p)

    p = action("pull", "download a model and its tokenizer from the Hugging Face Hub (offline: from its cache)")
    p.add_argument("hub_id", metavar="HUB_ID", help="model repo, e.g. NeoQuasar/Kronos-small")
    p.add_argument("--tokenizer", metavar="HUB_ID",
                   help="tokenizer repo, e.g. NeoQuasar/Kronos-Tokenizer-base (omit for a repo `models push` "
                        "wrote: it holds both, and its metadata.json)")
    p.add_argument("--name", help="registry name (default: the pushed version's name, else the model repo "
                                  "name, lower-cased)")
    p.add_argument("--revision", help="model revision (branch, tag or commit; default main); a pushed "
                                      "version's tag is vVERSION")
    p.add_argument("--tokenizer-revision", help="tokenizer revision (default main)")
    p.add_argument("--version", help="semantic version (default: the pushed version's, else next patch)")
    _add_promote_flags(p)

    p = action("push", "upload a version to a Hugging Face Hub repo in one commit tagged vVERSION: the model "
                       "(repo root) and tokenizer (tokenizer/) in the public layout, its metadata.json and a "
                       "model card written from it")
    p.add_argument("spec", metavar="NAME@VERSION", help="the version to push (NAME alone: its latest)")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub model repo (created if missing)")
    p.add_argument("--private", action="store_true",
                   help="create the repo private (an existing public repo is refused, not changed)")
    p.add_argument("--revision", metavar="BRANCH", default="main",
                   help="branch to commit to (default main; created from main if missing)")
    p.add_argument("--token-file", metavar="FILE",
                   help="file holding the Hub token (default: $HF_TOKEN, else the login `hf auth login` stored)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the files, their sizes and sha256, and the card; contact nothing, change nothing")

    p = action("init", "create a pair with random weights in a public shape (for load tests and demos)")
    p.add_argument("--shape", required=True, choices=["mini", "small", "base"],
                   help="public Kronos shape to copy: mini (4M params, fast on CPU), small (25M) or base (102M)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--name", help="registry name (default: kronos-SHAPE-random)")
    p.add_argument("--version", help="semantic version (default: next patch)")
    _add_promote_flags(p)

    p = action("promote", "point NAME's `latest` at VERSION")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--if-better-than", metavar="VERSION",
                   help="only if the evaluation (--on) says VERSION beats this one; else exit 1 saying why")
    p.add_argument("--on", metavar="EVAL.json", help="a `kronos-rt eval` report holding both versions")
    p.add_argument("--metric", default="mase", help="mase (default), mae, rmse, crps, wql or hit_rate")
    p.add_argument("--margin", type=float, default=0.0,
                   help="required relative improvement, e.g. 0.02 = 2 %% better (default 0: strictly better)")

    p = action("rollback", "move NAME's `latest` to the version below it")
    p.add_argument("name")

    p = action("verify", "health check: checksums, compatibility, strict load, canary forecast, memory")
    p.add_argument("spec", metavar="NAME[@VERSION]")
    p.add_argument("--device", default="auto", help="device for the canary forecast: auto (GPU if any), cpu, cuda:0")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = action("compare", "live quality of two versions side by side, per horizon step, from their score.v1 "
                          "events (the scores topic, or a file): MAE vs persistence, skill, hit rate, band "
                          "coverage vs nominal, pinball, CRPS")
    p.add_argument("a", metavar="NAME@A")
    p.add_argument("b", metavar="NAME@B")
    p.add_argument("--brokers", default="127.0.0.1:9092", help="Kafka bootstrap servers (default: 127.0.0.1:9092)")
    p.add_argument("--scores-topic", default="", help="topic of score.v1 events, read up to its current end")
    p.add_argument("--from", dest="from_file", metavar="SCORES", help="a saved file of score.v1 events instead "
                   "(JSON lines, a JSON array, or an object with a 'scores' array)")
    p.add_argument("--all-scores", action="store_true", help="each version's own scores (default: only the "
                   "steps both versions scored, so both columns describe the same bars)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="longest the topic read may take (default 60)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    from worker.adapters import security

    security.add_args(p)  # a secured broker: the same --security-protocol, --sasl-*, --ssl-* as the worker


def _table(rows: list[list[str]], header: list[str]) -> str:
    return format_columns(rows, header)


def _source_text(meta: dict) -> str:
    src = meta.get("source", {})
    kind = src.get("type")
    if kind == "hub":
        m = src.get("model", {})
        return f"hub {m.get('hub_id')}@{m.get('revision')}"
    if kind == "directory":
        return f"dir {src.get('model_dir')}"
    if kind == "random-init":
        return f"random-init {src.get('shape')} seed={src.get('seed')}"
    if kind == "finetune":
        return f"finetune {src.get('base')}"
    return str(kind or "?")


def _describe(mv: ModelVersion, verb: str) -> str:
    note = " (RANDOM WEIGHTS: forecasts are meaningless)" if mv.random_weights else ""
    return f"{verb} {mv.spec} at {mv.path}{note}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_verify(report: VerifyReport, random_weights: bool = False) -> None:
    print(f"verify {report.name}@{report.version}: {'OK' if report.ok else 'FAILED'}"
          + ("  (RANDOM WEIGHTS: loads and runs, but its forecasts are meaningless)" if random_weights else ""))
    print(_table([[c.name, "ok" if c.ok else "FAIL", c.detail] for c in report.checks], ["CHECK", "RESULT", "DETAIL"]))
    canary = f"{report.canary_ms:.1f} ms" if report.canary_ms is not None else "n/a"
    print(f"canary: {canary} on {report.device}; params+buffers: {_bytes(report.param_bytes)}; "
          f"peak RSS: {_bytes(report.peak_rss_bytes)}; peak GPU: {_bytes(report.peak_gpu_bytes)}")


def _run(args: argparse.Namespace, reg: Registry) -> int:
    if args.action == "list":
        rows = []
        for mv in reg.list():
            rows.append([mv.name, mv.version, "*" if reg.latest(mv.name) == mv.version else "",
                         mv.metadata.get("created_at", ""), _source_text(mv.metadata),
                         "random weights" if mv.random_weights else ""])
        if not rows:
            print(f"registry {reg.root} is empty")
        else:
            print(_table(rows, ["NAME", "VERSION", "LATEST", "CREATED", "SOURCE", "NOTE"]))
        return 0
    if args.action == "import":
        mv = reg.import_dirs(args.name, args.model_dir, args.tokenizer_dir, version=args.version, promote=args.promote)
        print(_describe(mv, "imported"))
    elif args.action == "pull":
        mv = reg.pull(args.hub_id, args.tokenizer, name=args.name, revision=args.revision,
                      tokenizer_revision=args.tokenizer_revision, version=args.version, promote=args.promote)
        print(_describe(mv, "pulled"))
    elif args.action == "push":
        return _push(args, reg)
    elif args.action == "init":
        name = args.name or f"kronos-{args.shape}-random"
        mv = reg.init(name, args.shape, seed=args.seed, version=args.version, promote=args.promote)
        print(_describe(mv, "created"))
    elif args.action == "promote":
        if args.if_better_than is not None:
            better, reason = _evidence(args, reg)
            if not better:
                print(f"kronos-rt models promote: not promoted: {reason}", file=sys.stderr)
                return 1
            print(reason)
        mv = reg.promote(args.name, args.version)
        print(f"{mv.name}: latest -> {mv.version}")
        return 0
    elif args.action == "rollback":
        mv = reg.rollback(args.name)
        print(f"{mv.name}: latest -> {mv.version} (rolled back)")
        return 0
    elif args.action == "compare":
        return _compare(args)
    elif args.action == "verify":
        mv = reg.resolve(args.spec)
        from kronos_rt.registry import verify_version

        report = verify_version(mv, device=args.device)
        if args.json:
            print(json.dumps({"name": report.name, "version": report.version, "ok": report.ok,
                              "checks": [vars(c) for c in report.checks], "canary_ms": report.canary_ms,
                              "param_bytes": report.param_bytes, "peak_rss_bytes": report.peak_rss_bytes,
                              "peak_gpu_bytes": report.peak_gpu_bytes, "device": report.device,
                              "random_weights": mv.random_weights}, indent=2))
        else:
            _print_verify(report, mv.random_weights)
        return 0 if report.ok else 1
    latest = reg.latest(mv.name)
    print(f"{mv.name}: latest -> {latest}" if latest else
          f"{mv.name}: no latest yet; `kronos-rt models promote {mv.name} {mv.version}`")
    return 0


def _push(args: argparse.Namespace, reg: Registry) -> int:
    """`models push`: the plan (kronos_rt/hub_push.py), printed with --dry-run, else sent."""
    from kronos_rt import hub_push

    mv = reg.resolve(args.spec)
    plan = hub_push.plan_push(mv, args.repo, args.revision)
    note = " (RANDOM WEIGHTS: the card says so)" if mv.random_weights else ""
    where = f"{plan.repo_id}@{plan.revision}"
    if args.dry_run:
        print(f"dry run: would push {plan.spec} to {where} in one commit \"{plan.commit_message}\" tagged "
              f"{plan.tag}, creating the repo{' (private)' if args.private else ''} if missing{note}")
        print(_table([[f.path, str(f.size), f.sha256] for f in plan.files], ["PATH", "BYTES", "SHA256"]))
        print(f"{len(plan.files)} files, {plan.total_bytes} bytes ({_bytes(plan.total_bytes)}); nothing was sent")
        print(f"--- {hub_push.CARD_NAME} ---")
        print(plan.card)
        return 0
    # The token is read here and handed over as a string: never an argument, never printed.
    token = hub_push.read_token_file(args.token_file) if args.token_file else None
    result = hub_push.push(plan, token=token, private=args.private, log=lambda m: print(m, file=sys.stderr))
    print(f"pushed {plan.spec} to {where}: commit {result.commit}, tag {result.tag}{note}")
    if result.deleted:
        print(f"deleted files of an earlier push: {', '.join(result.deleted)}")
    print(f"  {result.commit_url}")
    print(f"get it back with: kronos-rt models pull {plan.repo_id} --revision {result.tag}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Side-by-side figures of two versions from their scores (worker/tools/compare.py)."""
    import asyncio

    from worker.tools import compare

    compare.parse_spec(args.a)
    compare.parse_spec(args.b)
    if bool(args.from_file) == bool(args.scores_topic):
        raise ValueError("give the scores with exactly one of --scores-topic or --from")
    if args.from_file:
        scores = compare.load_scores(args.from_file)
    else:
        from worker.adapters import security

        scores = asyncio.run(compare.read_scores(args.brokers, args.scores_topic, args.timeout_s,
                                                 security.from_args(args)))
    result = compare.compare(scores, args.a, args.b, common=not args.all_scores)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(compare.format_comparison(result))
    if not result["overall"]["a"]["count"] and not result["overall"]["b"]["count"]:
        print(f"kronos-rt models compare: no scores of {args.a} or {args.b}"
              + (" on the same steps (--all-scores takes each one's own)" if not args.all_scores else ""),
              file=sys.stderr)
        return 1
    return 0


def _evidence(args: argparse.Namespace, reg: Registry) -> tuple[bool, str]:
    """Promote on evidence: compare the two versions in a `kronos-rt eval` report."""
    from kronos_rt.training.evaluate import compare

    reg.get(args.name, args.version)  # both must exist here, not only in the report
    reg.get(args.name, args.if_better_than)
    with open(args.on) as f:
        report = json.load(f)
    return compare(report, f"{args.name}@{args.version}", f"{args.name}@{args.if_better_than}",
                   args.metric, args.margin)


def main(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "promote":
        if (args.if_better_than is None) != (args.on is None):
            raise ConfigError("--if-better-than and --on go together")
        if args.margin < 0:
            raise ConfigError("--margin must be >= 0")
    if getattr(args, "action", None) == "pull" and args.tokenizer is None and args.tokenizer_revision:
        raise ConfigError("--tokenizer-revision needs --tokenizer (a pushed repo holds its tokenizer itself)")
    return _run(args, Registry(args.registry))


if __name__ == "__main__":
    from worker.cli import main as cli_main

    sys.exit(cli_main(["models", *sys.argv[1:]]))
