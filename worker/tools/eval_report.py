"""Output of `kronos-rt eval`: eval.json, eval.md (Markdown tables) and PNG plots, every
forecaster labelled with its name@version and RANDOM WEIGHTS where the registry says so.
The figures themselves come from kronos_rt.training.evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kronos_rt.training.evaluate import BAND
from worker.tools.tables import format_table


def display_label(label: str, entry: dict) -> str:
    return f"{label} (RANDOM WEIGHTS)" if entry.get("random_weights") else label


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}g}"


def markdown(report: dict, images: dict[str, Path] | None = None) -> str:
    """eval.md; `images` (plot stem -> file, from plots()) adds the charts: the forecasts of a few
    windows against the realized closes, error and coverage by step."""
    res = report["results"]
    cfg = report["config"]
    lines = [f"# Walk-forward evaluation: {report['windows']} windows",
             "",
             f"Test range {report['data']['test']} ({report['data']['first_origin']} .. "
             f"{report['data']['last_target']}), lookback {cfg['lookback']}, pred_len {cfg['pred_len']}, "
             f"stride {cfg['stride']}, {cfg['sample_count']} sample paths; target: close. Averages over the "
             "horizon steps; lower is better except hit rate; coverage of the 10-90 % band should be near 0.80.",
             ""]
    rows = []
    for label, e in res.items():
        s = e["summary"]
        rows.append([display_label(label, e), _fmt(s["mae"]), _fmt(s["rmse"]), _fmt(s["mase"]),
                     _fmt(s["hit_rate"], 3), _fmt(s["crps"]), _fmt(s["wql"]), _fmt(s.get("coverage"), 3),
                     _fmt(e.get("windows_per_s"), 4)])
    lines.append(format_table(["forecaster", "MAE", "RMSE", "MASE", "hit rate", "CRPS", "wQL", "coverage 80 %",
                               "windows/s"], rows))
    lines += ["", "MASE by horizon step:", ""]
    lines.append(format_table(["forecaster", *(str(h) for h in range(1, cfg["pred_len"] + 1))],
                              [[display_label(label, e), *(_fmt(v, 3) for v in e["per_step"]["mase"])]
                               for label, e in res.items()]))
    if any(e.get("random_weights") for e in res.values()):
        lines += ["", "RANDOM WEIGHTS: the registry says these weights are random; their forecasts mean nothing."]
    images = images or {}
    if "examples" in images:
        windows = report["examples"]["windows"]
        where = ", ".join(f"{w['series']} @ {w['origin']}" for w in windows)
        lines += ["", "## Forecasts against realized closes", "",
                  f"{len(windows)} windows spread over the test range ({where}): the last closes before the origin "
                  "(thin black), the realized closes after it (thick black), each forecaster's mean path and, "
                  "for models with sample paths, its 10-90 % band (shaded).", "",
                  f"![forecasts against realized closes]({images['examples'].name})"]
    if "error_by_step" in images:
        lines += ["", "## Error by horizon step", "", f"![MAE and MASE by step]({images['error_by_step'].name})"]
    if "coverage_by_step" in images:
        lines += ["", "## Band coverage by horizon step", "",
                  f"![coverage of the 10-90 % band by step]({images['coverage_by_step'].name})"]
    return "\n".join(lines) + "\n"


def plots(report: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    res = report["results"]
    steps = np.arange(1, report["config"]["pred_len"] + 1)
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, e in res.items():
        style = "--" if e["kind"] == "baseline" else "-"
        for ax, metric in zip(axes, ("mae", "mase")):
            vals = [np.nan if v is None else v for v in e["per_step"][metric]]
            ax.plot(steps, vals, style, marker="o", ms=3, label=display_label(label, e))
    for ax, metric in zip(axes, ("MAE of close", "MASE")):
        ax.set_xlabel("horizon step")
        ax.set_title(f"{metric} by step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"walk-forward error, {report['windows']} windows")
    fig.tight_layout()
    written.append(out_dir / "error_by_step.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    banded = {k: e for k, e in res.items() if "coverage" in e["per_step"]}
    if banded:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, e in banded.items():
            ax.plot(steps, [np.nan if v is None else v for v in e["per_step"]["coverage"]], marker="o", ms=3,
                    label=display_label(label, e))
        ax.axhline(BAND[1] - BAND[0], color="grey", ls=":", label="nominal 0.80")
        ax.set_ylim(0, 1)
        ax.set_xlabel("horizon step")
        ax.set_title("coverage of the 10-90 % band")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out_dir / "coverage_by_step.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    ex = report["examples"]
    n = len(ex["windows"])
    if n:
        fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False)
        for k, (ax, win) in enumerate(zip(axes[0], ex["windows"])):
            hist = win["history_close"]
            xh = np.arange(-len(hist) + 1, 1)
            ax.plot(xh, hist, color="black", lw=1, label="history")
            ax.plot(steps, win["realized_close"], color="black", lw=2, label="realized")
            for label, f in ex["forecasts"].items():
                line, = ax.plot(steps, f["mean"][k], lw=1, ls="--" if label in ("persistence", "drift") else "-",
                                label=display_label(label, res[label]))
                if "lo" in f:
                    ax.fill_between(steps, f["lo"][k], f["hi"][k], color=line.get_color(), alpha=0.15)
            ax.set_title(f"{win['series']} @ {win['origin']}", fontsize=9)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("forecast vs realized close (bands: 10-90 % of sample paths)")
        fig.tight_layout()
        written.append(out_dir / "examples.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def write_report(report: dict, out_dir, plot: bool = True) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "eval.json", "markdown": out_dir / "eval.md"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    images = {p.stem: p for p in plots(report, out_dir)} if plot else {}
    paths["markdown"].write_text(markdown(report, images))
    paths.update(images)
    return paths
