"""Screen plots: 1/q per drug and feature set (the paper's Fig. 6a view) and mAP against dose."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

MARKERS = {"base": "o", "finetuned": "s", "handcrafted": "^"}


def _series(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    keys = df["model_role"].fillna("") + df["model_version"].fillna("").map(lambda v: "" if not v else f" ({v[:24]})")
    return [(k, g) for k, g in df.assign(_k=keys).groupby("_k", sort=True)]


def inverse_q_plot(df: pd.DataFrame, out: Path, title: str = "") -> Path:
    """One column per drug x concentration, one marker per feature set / model: 1/q on a log axis, the hit
    threshold (q = 0.05, 1/q = 20) as a line; planted effects in the labels when ``df`` has them."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    d = df.copy()
    d["treatment"] = d["drug"] + d["concentration"].map(lambda c: "" if pd.isna(c) else f" {c:g}µM")
    if "planted_effect" in d.columns:
        eff = d["planted_effect"].fillna("?").astype(str)
        d["treatment"] = d["treatment"] + " [" + eff + "]"
    order = list(dict.fromkeys(d.sort_values(["drug", "concentration"])["treatment"]))
    x_of = {t: i for i, t in enumerate(order)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(order) + 2), 4.2))
    series = _series(d)
    for j, (name, g) in enumerate(series):
        dx = (j - (len(series) - 1) / 2) * 0.18
        inv_q = 1.0 / np.clip(g["q_value"].to_numpy(float), 1e-6, 1.0)
        ax.scatter([x_of[t] + dx for t in g["treatment"]], inv_q, label=name, s=22,
                   marker=MARKERS.get(str(g["model_role"].iloc[0]), "o"))
    ax.axhline(20.0, color="k", lw=0.8, ls="--")
    ax.text(len(order) - 0.5, 21, "q = 0.05", ha="right", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("1 / q")
    ax.set_xticks(range(len(order)), order, rotation=75, ha="right", fontsize=7)
    ax.set_title(title or "1/q per drug and feature set")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def dose_response_plot(df: pd.DataFrame, out: Path, title: str = "") -> Path:
    """mAP against concentration (log axis) per drug, one panel per feature set / model; hits filled."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    d = df[df["concentration"].notna() & (df["concentration"] > 0)]
    series = _series(d)
    fig, axes = plt.subplots(1, max(len(series), 1), figsize=(4.0 * max(len(series), 1), 3.6), sharey=True,
                             squeeze=False)
    for ax, (name, g) in zip(axes[0], series, strict=False):
        for drug, h in g.sort_values("concentration").groupby("drug", sort=True):
            lines = ax.plot(h["concentration"], h["mean_average_precision"], "-", lw=1, label=drug)
            hits = h[h["is_hit"].astype(bool)]
            ax.scatter(hits["concentration"], hits["mean_average_precision"], color=lines[0].get_color(), s=18)
            ax.scatter(h["concentration"], h["mean_average_precision"], facecolors="none",
                       edgecolors=lines[0].get_color(), s=18)
        ax.set_xscale("log")
        ax.set_xlabel("concentration (µM)")
        ax.set_title(name, fontsize=8)
    axes[0][0].set_ylabel("mAP vs DMSO (filled: q < 0.05)")
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title or "dose response", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
