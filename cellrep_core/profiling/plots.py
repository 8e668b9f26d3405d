"""Screen plots: 1/q per drug and feature set (the paper's Fig. 6a view) and mAP against dose."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cellrep_core.atomic import save_figure  # noqa: E402

MARKERS = {"base": "o", "finetuned": "s", "handcrafted": "^", "structure_given_shape": "D"}


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
    return save_figure(fig, out, dpi=110)


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
    return save_figure(fig, out, dpi=110)


def pr_curves_plot(reports: dict, out: Path, title: str = "") -> Path:
    """Held-out one-vs-rest precision-recall curves per phenotype, one panel per feature set, with macro-F1
    against the shuffled-label baseline in the panel title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reports), figsize=(4.6 * len(reports), 3.8), squeeze=False)
    for ax, (fset, rep) in zip(axes[0], reports.items(), strict=True):
        for cls, (r, p) in rep.pr_curves.items():
            ax.plot(r, p, label=f"{cls} (F1 {rep.per_class_f1[cls]:.2f})")
        ax.set_title(f"{fset}: macro-F1 {rep.macro_f1:.2f} (shuffled {rep.shuffled_macro_f1:.2f})", fontsize=9)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize=7)
    return _save(fig, out, title)


def enrichment_plot(enrich: pd.DataFrame, out: Path, title: str = "") -> Path:
    """-log10 q of each treatment x phenotype (signed: + where the treatment's probability is the higher), one
    panel per feature set; enriched cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(enrich.feature_set))
    fig, axes = plt.subplots(1, len(sets), figsize=(4.8 * len(sets), 0.28 * enrich.groupby(
        ["drug", "concentration"]).ngroups + 1.8), squeeze=False)
    for ax, fset in zip(axes[0], sets, strict=True):
        e = enrich[enrich.feature_set == fset].copy()
        e["treatment"] = e.drug + " @ " + e.concentration.map(lambda c: f"{c:g}")
        sign = np.where(e.mean_probability > e.control_mean_probability, 1.0, -1.0)
        e["score"] = sign * -np.log10(np.maximum(e.q_value, 1e-6))
        m = e.pivot(index="treatment", columns="phenotype", values="score")
        im = ax.imshow(m.to_numpy(), cmap="RdBu_r", vmin=-4, vmax=4, aspect="auto")
        ax.set_yticks(range(len(m)), m.index, fontsize=7)
        ax.set_xticks(range(m.shape[1]), m.columns, fontsize=7, rotation=45)
        en = e.pivot(index="treatment", columns="phenotype", values="enriched").fillna(False).to_numpy()
        for i, j in zip(*np.nonzero(en), strict=True):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, color="black"))
        ax.set_title(fset, fontsize=9)
        fig.colorbar(im, ax=ax, label="signed -log10 q")
    return _save(fig, out, title)


def _save(fig, out: Path, title: str = "") -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out, dpi=90)
