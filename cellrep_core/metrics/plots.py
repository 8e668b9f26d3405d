"""Summary of the benchmark per data set: z-scored metrics (higher = better), a polar plot and bar plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cellrep_core.atomic import save_figure
from cellrep_core.metrics.benchmark import NOT_SCORED, higher_is_better


def summary_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Models × metrics of z-scores across the models of one data set, sign flipped where lower is better,
    so that higher is better everywhere. Metrics without a value for every model, and the informational
    ones, are left out; a metric equal for all models scores 0."""
    t = table[~table["metric"].isin(NOT_SCORED)]
    wide = t.pivot_table(index="model", columns="metric", values="value", aggfunc="first")
    wide = wide.dropna(axis=1, how="any")
    mu, sd = wide.mean(0), wide.std(0, ddof=0)
    z = (wide - mu) / sd.where(sd > 0)
    z = z.fillna(0.0)
    for m in z.columns:
        if not higher_is_better(m):
            z[m] = -z[m]
    return z


def radar_plot(scores: pd.DataFrame, path: Path, title: str) -> Path:
    """Polar plot of ``summary_scores`` (one closed line per model)."""
    metrics = list(scores.columns)
    angles = np.linspace(0, 2 * np.pi, len(metrics), endpoint=False)
    fig = plt.figure(figsize=(7.5, 7.5))
    ax = fig.add_subplot(projection="polar")
    for model, r in scores.iterrows():
        vals = r.to_numpy(float)
        ax.plot(np.r_[angles, angles[:1]], np.r_[vals, vals[:1]], marker="o", label=model)
        ax.fill(np.r_[angles, angles[:1]], np.r_[vals, vals[:1]], alpha=0.1)
    ax.set_xticks(angles)
    ax.set_xticklabels([m.replace("_", "\n", 2) for m in metrics], fontsize=7)
    ax.set_title(f"{title}\n(z-score across models, higher = better)", fontsize=10)
    ax.legend(loc="upper right", bbox_to_anchor=(1.3, 1.1), fontsize=8)
    return _save(fig, path, dpi=110)


def _save(fig, path: Path, dpi: int) -> Path:
    return save_figure(fig, path, dpi=dpi)


def bar_plots(table: pd.DataFrame, path: Path, title: str) -> Path:
    """One bar panel per metric with each model's raw value (± std); NULL metrics show their reason."""
    metrics = list(dict.fromkeys(table["metric"]))
    models = list(dict.fromkeys(table["model"]))
    ncol = 4
    nrow = int(np.ceil(len(metrics) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 2.6 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        sub = table[table["metric"] == metric].set_index("model").reindex(models)
        vals = sub["value"].to_numpy(float)
        err = sub["std"].to_numpy(float)
        x = np.arange(len(models))
        ax.bar(x, np.nan_to_num(vals), yerr=np.where(np.isfinite(err), err, 0), color=colors[: len(models)])
        if np.isnan(vals).all():
            ax.text(0.5, 0.5, f"n/a: {sub['note'].dropna().iloc[0] if sub['note'].notna().any() else ''}"[:60],
                    ha="center", va="center", fontsize=6, transform=ax.transAxes, wrap=True)
        arrow = "↑" if higher_is_better(metric) else "↓"
        ax.set_title(f"{metric} {arrow}", fontsize=8)
        ax.set_xticks(x)
        ax.set_xticklabels(models, rotation=30, ha="right", fontsize=6)
        pos = vals[np.isfinite(vals)]
        if len(pos) and (pos > 0).all() and pos.max() / pos.min() > 100:  # e.g. invariance errors: log scale
            ax.set_yscale("log")
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=100)


def write_reports(table: pd.DataFrame, out_dir: Path, dataset: str) -> dict:
    """Write ``radar.png``, ``bars.png`` and ``scores.csv`` for one data set's benchmark table; returns
    their paths and the markdown of the z-scores and of the raw table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = summary_scores(table)
    out = {"bars": bar_plots(table, out_dir / "bars.png", f"{dataset}: benchmark metrics")}
    if scores.shape[1] >= 3:
        out["radar"] = radar_plot(scores, out_dir / "radar.png", dataset)
    scores.to_csv(out_dir / "scores.csv")
    out["scores_csv"] = out_dir / "scores.csv"
    out["scores_md"] = scores.round(2).to_markdown()
    wide = table.pivot_table(index="metric", columns="model", values="value", aggfunc="first", dropna=False)
    out["table_md"] = wide.to_markdown(floatfmt=".4g")
    return out
