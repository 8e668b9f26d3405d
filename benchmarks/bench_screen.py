"""Held-out calibration and power of drug profiling on realistic synthetic screens (make bench-screen).

Screens are generated from seeds at and above ``EVAL_SEED_START`` (900,000), a range that defaults, the demo,
tests and development never use, and run through the same assets a landed plate goes through (cells → point
clouds → fine-tuned model → embeddings → plate q-values → screen q-values) on a storage root of their own,
with a base model trained there on the synthetic polymorphic reference set (its default config and seed).

Every screen: two replicate plates, each effect given by one drug at three concentrations whose top strength
cycles over ``--top-strengths`` from screen to screen (so the strengths of an effect cover 0.1 to 1.4), four
null drugs at three concentrations, the nuisance of ``cellrep_core.data.screen`` switched on.

Reported, per feature set (base model zero-shot, fine-tuned models, hand-crafted features), from the screen-level
q-values (``screen_qvalues``):

* calibration: the null treatments' p-values against uniform (two-sided KS statistic, and the one-sided
  statistic in the anti-conservative direction), the false-discovery proportion at q < 0.05 per screen
  (false hits / hits, 0 when there is no hit), its mean and spread;
* power: detection (q < 0.05) against the planted strength for every effect, as an increasing isotonic fit;
  the minimum detectable effect is the smallest strength at which that fit reaches 50 %.

The last line: ``fdp=<x> ks_null=<x> mde_learned=<effect:strength,...> mde_handcrafted=<effect:strength,...>``
(fdp and ks over the learned feature sets; ``mde_learned`` the better of base and fine-tuned per effect;
``>max`` when an effect was never detected at half power).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOP_STRENGTHS = (0.6, 1.0, 1.4)
N_NULL_DRUGS = 4
ROLES = ("base", "finetuned", "handcrafted")


def build_specs(n_screens: int, top_strengths: tuple[float, ...], n_per_well: int, concentrations: tuple[float, ...]):
    from cellrep_core.data import screen

    specs = []
    effects = [e for e in screen.EFFECTS if e != "none"]
    for i in range(n_screens):
        top = top_strengths[i % len(top_strengths)]
        drugs = [screen.Drug(f"e{i}_{eff}", eff, top) for eff in effects]
        drugs += [screen.Drug(f"e{i}_null{j}", "none", 0.0) for j in range(N_NULL_DRUGS)]
        specs.append(screen.ScreenSpec(f"eval{i:02d}", screen.EVAL_SEED_START + i, drugs, concentrations,
                                       n_replicates=2, n_per_well=n_per_well, evaluation=True))
    return specs


def monotone_power(strength: np.ndarray, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Increasing isotonic fit of detection against strength (strength 0 is pinned to no detection)."""
    from sklearn.isotonic import IsotonicRegression

    order = np.argsort(strength, kind="stable")
    x, y = strength[order], hit[order].astype(float)
    fit = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    return x, fit.predict(x)


def mde(strength: np.ndarray, hit: np.ndarray) -> float:
    """Smallest strength at which the isotonic detection curve reaches 50 % (inf when it never does)."""
    if len(strength) == 0:
        return float("inf")
    x, p = monotone_power(strength, hit)
    above = np.flatnonzero(p >= 0.5)
    return float(x[above[0]]) if len(above) else float("inf")


def summarise(df: pd.DataFrame) -> dict:
    """Calibration and power from screen q-values joined with the truth (planted_effect, strength)."""
    from scipy import stats

    out: dict = {"calibration": {}, "power": {}, "mde": {}}
    for role in ROLES:
        d = df[df.model_role == role]
        null = d[d.planted_effect == "none"]
        p = null.p_value.to_numpy(float)
        ks = stats.kstest(p, "uniform") if len(p) else None
        # anti-conservative = too many small p-values: the empirical CDF above the uniform one
        ks_anti = stats.kstest(p, "uniform", alternative="greater") if len(p) else None
        fdps = []
        for _, g in d.groupby("screen_id"):
            hits = g[g.is_hit]
            fdps.append(float((hits.planted_effect == "none").mean()) if len(hits) else 0.0)
        out["calibration"][role] = {
            "n_null": int(len(p)), "null_hits": int(null.is_hit.sum()),
            "ks": float(ks.statistic) if ks else None, "ks_p": float(ks.pvalue) if ks else None,
            "ks_anticonservative": float(ks_anti.statistic) if ks_anti else None,
            "ks_anticonservative_p": float(ks_anti.pvalue) if ks_anti else None,
            "fdp_mean": float(np.mean(fdps)) if fdps else None, "fdp_sd": float(np.std(fdps)) if fdps else None,
            "fdp_per_screen": fdps,
        }
        for eff, g in d[d.planted_effect != "none"].groupby("planted_effect"):
            s, h = g.strength.to_numpy(float), g.is_hit.to_numpy(bool)
            out["power"].setdefault(eff, {})[role] = {
                "strength": s.round(3).tolist(), "hit": h.astype(int).tolist(),
                "fit": dict(zip(*(v.round(3).tolist() for v in monotone_power(s, h)), strict=False)),
            }
            out["mde"].setdefault(eff, {})[role] = mde(s, h)
    return out


def power_plot(df: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    effects = sorted(e for e in df.planted_effect.unique() if e != "none")
    fig, axes = plt.subplots(1, len(effects), figsize=(2.6 * len(effects), 2.6), sharey=True, squeeze=False)
    colors = {"base": "C0", "finetuned": "C1", "handcrafted": "C2"}
    rng = np.random.default_rng(0)
    for ax, eff in zip(axes[0], effects, strict=True):
        for role in ROLES:
            g = df[(df.model_role == role) & (df.planted_effect == eff)]
            if g.empty:
                continue
            s, h = g.strength.to_numpy(float), g.is_hit.to_numpy(bool)
            x, p = monotone_power(s, h)
            ax.step(x, p, where="post", color=colors[role], label=role, lw=1.4)
            ax.scatter(s, h + rng.uniform(-0.04, 0.04, len(h)), color=colors[role], s=8, alpha=0.6)
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_title(eff, fontsize=9)
        ax.set_xlabel("strength", fontsize=8)
    axes[0][0].set_ylabel("detected (q < 0.05)", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def fmt_mde(mdes: dict, roles: tuple[str, ...]) -> str:
    parts = []
    for eff in sorted(mdes):
        v = min(mdes[eff].get(r, float("inf")) for r in roles)
        parts.append(f"{eff}:{'>max' if not np.isfinite(v) else f'{v:.2f}'}")
    return ",".join(parts)


def run(args: argparse.Namespace) -> None:
    home = Path(args.home).resolve()
    if not args.keep and home.exists():
        shutil.rmtree(home)
    os.environ["CELLREP_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(home / "dagster")
    import dagster as dg

    from cellrep_core import paths
    from cellrep_core.data.screen import generate_screen
    from cellrep_core.store.warehouse import Warehouse
    from orchestration.demo import _materialize, instance, register_landing_plates

    t0 = time.perf_counter()
    inst = instance()
    ref = dg.AssetSelection.assets(*(f"synthetic_polymorphic_{s}" for s in ("cells", "pointclouds", "model")))
    ops = {}
    if args.model:
        ops["synthetic_polymorphic_model"] = {"config": {"model": args.model}}
    if args.reference_size:
        ops["synthetic_polymorphic_cells"] = {"config": {"size": args.reference_size}}
    _materialize(inst, ref, run_config={"ops": ops} if ops else None)
    print(f"base model ready in {time.perf_counter() - t0:.0f} s", flush=True)
    specs = build_specs(args.screens, tuple(args.top_strengths), args.n_per_well, tuple(args.concentrations))
    for spec in specs:
        t1 = time.perf_counter()
        folders = generate_screen(spec, paths.landing_plates_dir())
        register_landing_plates(inst)
        for f in folders:
            _materialize(inst, dg.AssetSelection.groups("plates"), partition_key=f.name,
                         run_config={"ops": {"plate_qvalues": {"config": {"null_size": args.plate_null_size}}}})
        print(f"screen {spec.screen_id} (seed {spec.seed}, top strength {spec.drugs[0].max_strength}): "
              f"{len(folders)} plates in {time.perf_counter() - t1:.0f} s", flush=True)
    t2 = time.perf_counter()
    _materialize(inst, dg.AssetSelection.assets("screen_qvalues"),
                 run_config={"ops": {"screen_qvalues": {"config": {"null_size": args.null_size}}}})
    print(f"screen q-values (null size {args.null_size}) in {time.perf_counter() - t2:.0f} s", flush=True)
    wh = Warehouse()
    df = wh.query(
        "SELECT s.*, t.planted_effect, t.strength FROM screen_qvalues s JOIN plates p ON p.screen_id = s.screen_id "
        "JOIN drug_truth t ON t.plate_id = p.plate_id AND t.drug = s.drug AND t.concentration = s.concentration "
        "WHERE p.plate_id LIKE '%_r1'")
    summary = summarise(df)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "bench_screen_qvalues.csv", index=False)
    (out_dir / "bench_screen_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    plot = power_plot(df, Path(args.plot))
    print(f"\n{len(specs)} held-out screens, seeds {specs[0].seed}..{specs[-1].seed}, {len(df)} rows; "
          f"total {time.perf_counter() - t0:.0f} s; plot {plot}")
    print("\ncalibration (null treatments):")
    for role, c in summary["calibration"].items():
        print(f"  {role:12s} n={c['n_null']} null hits={c['null_hits']} KS={c['ks']:.3f} (p {c['ks_p']:.3f}) "
              f"anti-conservative KS={c['ks_anticonservative']:.3f} (p {c['ks_anticonservative_p']:.3f}) "
              f"FDP mean={c['fdp_mean']:.3f} sd={c['fdp_sd']:.3f}")
    print("\nminimum detectable strength (50 % power; strength 1 = the demo plates' effect size):")
    for eff, m in sorted(summary["mde"].items()):
        print(f"  {eff:10s} " + "  ".join(f"{r}={'>max' if not np.isfinite(v) else f'{v:.2f}'}" for r, v in m.items()))
    learned = [summary["calibration"][r] for r in ("base", "finetuned") if r in summary["calibration"]]
    fdp = float(np.mean([c["fdp_mean"] for c in learned]))
    ks = float(np.max([c["ks"] for c in learned]))
    print(f"fdp={fdp:.3f} ks_null={ks:.3f} mde_learned={fmt_mde(summary['mde'], ('base', 'finetuned'))} "
          f"mde_handcrafted={fmt_mde(summary['mde'], ('handcrafted',))}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--screens", type=int, default=3)
    ap.add_argument("--top-strengths", type=float, nargs="+", default=list(TOP_STRENGTHS))
    ap.add_argument("--concentrations", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    ap.add_argument("--n-per-well", type=int, default=10)
    ap.add_argument("--null-size", type=int, default=100_000)
    ap.add_argument("--plate-null-size", type=int, default=10_000)
    ap.add_argument("--home", default=str(ROOT / ".cellrep-bench-screen"))
    ap.add_argument("--model", default="", help="base model config (default: the reference set's, sdf_demo)")
    ap.add_argument("--reference-size", type=int, default=0, help="reference cells (default: the demo's 200)")
    ap.add_argument("--keep", action="store_true", help="reuse the storage root (base model, landed screens)")
    ap.add_argument("--out", default=str(ROOT / ".cellrep-bench-screen" / "results"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "power_curves.png"))
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
