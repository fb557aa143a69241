"""The model card (README.md) of a registry version pushed to the Hugging Face Hub.

Written only from what the version's metadata.json holds: where it came from (the base
model), the fine-tune's data files (sha256, time ranges), splits, hyperparameters and
losses, the walk-forward evaluation if one was recorded (metrics.walk_forward, written by
`kronos-rt eval --record`), the library versions, and a RANDOM WEIGHTS warning where so.
What the metadata does not record is said to be unknown, never guessed.

Library code: kronos_rt/hub_push.py calls `model_card`; nothing here touches the network.
"""
from __future__ import annotations

import json
from pathlib import PurePath

# Metric columns of the evaluation table, in the order `kronos-rt eval` prints them.
EVAL_METRICS = ("mase", "mae", "rmse", "crps", "wql", "hit_rate", "coverage")
_RANDOM = ("**RANDOM WEIGHTS.** This version's weights were never trained on market data "
           "(or were fine-tuned from weights that were not): it loads and runs, but its forecasts are "
           "meaningless. Use it for load tests and demos only.")


def _cell(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list, tuple)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def hub_base(metadata: dict) -> str | None:
    """The Hub repo this version descends from (a pull, or a fine-tune of a pull), if recorded."""
    src = metadata.get("source") or {}
    if src.get("type") == "hub":
        return (src.get("model") or {}).get("hub_id")
    base = (metadata.get("finetune") or {}).get("base") or {}
    bsrc = base.get("source") or {}
    if bsrc.get("type") == "hub":  # --base HUB_ID
        model = bsrc.get("model")
        return model if isinstance(model, str) else (model or {}).get("hub_id")
    if bsrc.get("type") == "registry":  # --base NAME@VERSION: that version's own source
        inner = bsrc.get("source") or {}
        if inner.get("type") == "hub":
            return (inner.get("model") or {}).get("hub_id")
    return None


def _base_lines(metadata: dict) -> list[str]:
    src = metadata.get("source") or {}
    kind = src.get("type")
    if kind == "hub":
        m, t = src.get("model") or {}, src.get("tokenizer") or {}
        return [f"Pulled from the Hub: model `{m.get('hub_id')}` at `{m.get('revision')}` (commit `{m.get('commit')}`), "
                f"tokenizer `{t.get('hub_id')}` at `{t.get('revision')}` (commit `{t.get('commit')}`)."]
    if kind == "random-init":
        return [f"Random initialisation in the public `{src.get('shape')}` shape, seed {src.get('seed')}."]
    if kind == "finetune":
        base = (metadata.get("finetune") or {}).get("base") or {}
        lines = [f"Fine-tuned by `kronos-rt finetune` from `{base.get('spec') or src.get('base')}`."]
        if base.get("source"):
            lines.append(f"Base source: {_cell(base['source'])}")
        if base.get("random_weights"):
            lines.append("The base had random weights.")
        return lines
    if kind == "directory":
        return ["Imported from local checkpoint directories (`kronos-rt models import`); their origin is not recorded."]
    return [f"Source: {_cell(src) if src else 'not recorded'}."]


def _architecture(metadata: dict) -> list[str]:
    mc, tc = metadata.get("model_config") or {}, metadata.get("tokenizer_config") or {}
    keys = [k for k in ("d_model", "n_layers", "n_heads", "ff_dim", "s1_bits", "s2_bits") if k in mc]
    rows = [[f"model.{k}", mc[k]] for k in keys]
    rows += [[f"tokenizer.{k}", tc[k]] for k in ("d_model", "n_enc_layers", "n_dec_layers", "d_in") if k in tc]
    rows.append(["max_context", metadata.get("max_context") or "not recorded (served as 512)"])
    return _table(["setting", "value"], rows)


def _training(ft: dict) -> list[str]:
    out = ["## Training data", ""]
    data = ft.get("data") or {}
    files = data.get("files") or []
    if files:
        out += _table(["file", "sha256", "rows", "symbols", "start", "end"],
                      [[PurePath(str(f.get("path", "?"))).name, f"`{f.get('sha256')}`", f.get("rows"),
                        ", ".join(f.get("symbols") or []), f.get("start"), f.get("end")] for f in files])
    else:
        out.append("No data files recorded.")
    splits = data.get("splits") or {}
    if splits:
        out += ["", "Splits (time ranges): " + "; ".join(f"{k} {v}" for k, v in splits.items()) + "."]
    for part in ("train_windows", "val_windows"):
        w = data.get(part)
        if w:
            rng = w.get("range")
            rng = f"{rng[0]} .. {rng[1]}" if isinstance(rng, (list, tuple)) and len(rng) == 2 else rng
            out.append(f"{part.replace('_', ' ').capitalize()}: {w.get('count')} ({rng}).")
    if data.get("bad_rows_dropped"):
        out.append(f"Bad rows dropped: {data['bad_rows_dropped']}.")
    hyper = ft.get("hyperparameters") or {}
    if hyper:
        out += ["", "## Hyperparameters", ""] + _table(["name", "value"], [[k, v] for k, v in sorted(hyper.items())])
    stages = ft.get("stages") or {}
    if stages:
        out += ["", "## Training result", ""] + _table(
            ["stage", "steps", "best step", "base val loss", "best val loss", "samples/s", "interrupted"],
            [[st, s.get("steps"), s.get("best_step"), s.get("base_val_loss"), s.get("best_val_loss"),
              s.get("samples_per_s"), s.get("interrupted")] for st, s in stages.items()])
    if ft.get("wall_s") is not None:
        out.append(f"\nWall time: {ft['wall_s']} s.")
    return out


def _evaluation(metadata: dict, spec: str) -> list[str]:
    metrics = metadata.get("metrics") or {}
    wf = metrics.get("walk_forward")
    out = ["## Walk-forward evaluation", ""]
    if isinstance(wf, dict) and isinstance(wf.get("summary"), dict):
        rows = {spec: wf["summary"], **(wf.get("baselines") or {}), **(wf.get("compared_with") or {})}
        cols = [m for m in EVAL_METRICS if any(m in (r or {}) for r in rows.values())]
        out += _table(["forecaster", *cols], [[k, *[(r or {}).get(c) for c in cols]] for k, r in rows.items()])
        cfg = wf.get("config") or {}
        out += ["", f"Close forecasts over {wf.get('windows')} windows in the test range {wf.get('test')} "
                    f"(lookback {cfg.get('lookback')}, pred_len {cfg.get('pred_len')}, stride {cfg.get('stride')}, "
                    f"{cfg.get('sample_count')} sample paths), recorded {wf.get('created_at')}. "
                    "Lower is better except hit_rate; coverage is of the 10-90 % band."]
        files = (wf.get("data") or {}).get("files") or []
        if files:
            out.append("Test data: " + ", ".join(f"{PurePath(str(f.get('path', '?'))).name} (sha256 `{f.get('sha256')}`)"
                                                 for f in files) + ".")
    else:
        out.append("No walk-forward evaluation recorded for this version (`kronos-rt eval --record` records one).")
    others = {k: v for k, v in metrics.items() if k != "walk_forward"}
    if others:
        out += ["", "Other recorded metrics:", ""] + _table(["metric", "value"], [[k, v] for k, v in sorted(others.items())])
    return out


def model_card(metadata: dict, repo_id: str, tag: str, files: list[tuple[str, int, str]],
               pushed_with: dict[str, str | None]) -> str:
    """README.md text. files: (path in repo, size, sha256) of what the commit uploads besides
    the card; pushed_with: library versions of the pushing process."""
    name, version = metadata.get("name", "?"), metadata.get("version", "?")
    spec = f"{name}@{version}"
    front = ["---", "library_name: kronos-rt", "pipeline_tag: time-series-forecasting",
             "tags:", "- kronos", "- time-series-forecasting", "- finance", "- kronos-rt"]
    base = hub_base(metadata)
    if base:
        front.append(f"base_model: {base}")
    front.append("---")
    out = front + ["", f"# {repo_id} ({spec})", ""]
    if metadata.get("random_weights"):
        out += ["> " + _RANDOM, ""]
    out += [f"A Kronos model and tokenizer pair, version `{version}` of `{name}` in a kronos-rt model registry, "
            f"created {metadata.get('created_at', 'at an unrecorded time')}. This card was written by "
            "`kronos-rt models push` from the version's metadata.json (uploaded beside it).", "",
            "## Use", "", "```sh", f"kronos-rt models pull {repo_id} --revision {tag}", "```", "",
            "With the reference code (github.com/shiyu-coder/Kronos): the model is at the repo root, "
            "the tokenizer in `tokenizer/`.", "", "```python",
            "from huggingface_hub import snapshot_download",
            "from model import Kronos, KronosTokenizer  # the reference repository's package", "",
            f'path = snapshot_download("{repo_id}", revision="{tag}")',
            "model = Kronos.from_pretrained(path)",
            'tokenizer = KronosTokenizer.from_pretrained(f"{path}/tokenizer")', "```", "",
            "## Base model", ""]
    out += _base_lines(metadata)
    origin = metadata.get("origin")
    if isinstance(origin, dict) and origin.get("source"):  # pulled back from a push: where it began
        out += ["", f"It was pushed as `{origin.get('name')}@{origin.get('version')}`, created "
                    f"{origin.get('created_at')}; its source then:"]
        out += _base_lines({"source": origin["source"], "finetune": metadata.get("finetune")})
    out += ["", "## Architecture", ""] + _architecture(metadata) + [""]
    ft = metadata.get("finetune")
    if isinstance(ft, dict):
        out += _training(ft) + [""]
    else:
        out += ["## Training data", "", "Not recorded: this version was not fine-tuned by kronos-rt.", ""]
    out += _evaluation(metadata, spec) + [""]
    out += ["## Library versions", ""]
    libs = (ft or {}).get("libraries") if isinstance(ft, dict) else None
    if libs:
        out += ["Training: " + ", ".join(f"{k} {v}" for k, v in libs.items()) + "."]
    out += ["Pushed with: " + ", ".join(f"{k} {v}" for k, v in pushed_with.items()) + ".", "",
            "## Files", ""]
    out += _table(["path", "bytes", "sha256"], [[p, size, f"`{digest}`"] for p, size, digest in files])
    out += ["", "`metadata.json` lists the sha256 of every checkpoint file under its registry path "
            "(`model/X` is `X` here, `tokenizer/X` is `tokenizer/X`); `kronos-rt models pull` checks them.", ""]
    return "\n".join(out)
