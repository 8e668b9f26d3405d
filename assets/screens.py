"""Screens: drug x concentration q-values over a screen's replicate plates, with the 1/q and dose plots."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd

from assets.plates import plate_qvalues
from assets.reference import _png_md
from assets.resources import GPU_OP_TAGS, FeatureStoreResource, WarehouseResource
from assets.sql_models import sql_automation
from cellrep_core import paths, pipeline
from cellrep_core.profiling.screen import SCREEN_NULL_SIZE


class ScreenProfileConfig(dg.Config):
    """Null size of the screen-level mAP test (REFERENCE.md: at least 100,000) and its seed."""

    null_size: int = SCREEN_NULL_SIZE
    seed: int = 0
    force: bool = False  # recompute screens whose q-values are newer than all of their plates' already


@dg.asset(group_name="screens", deps=[plate_qvalues], kinds={"duckdb"}, automation_condition=sql_automation(),
          description="Every screen (plates landed with a screen_id): mAP, p and BH q per drug x concentration over "
                      "its replicate plates for the base model, the fine-tuned models and the hand-crafted "
                      "features; 1/q and dose-response plots under reports/screens/<screen_id>/.")
def screen_qvalues(context: dg.AssetExecutionContext, config: ScreenProfileConfig, warehouse: WarehouseResource,
                   feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    wh, fs = warehouse.get(), feature_store.get()
    md: dict = {}
    done, waiting, unchanged = [], {}, []
    for sid, plates in pipeline.screens(wh).items():
        if not config.force and pipeline.up_to_date(wh, "screen_qvalues", "screen", sid):
            unchanged.append(sid)  # no plate of it was profiled again since
            continue
        t0 = time.perf_counter()
        try:
            df = pipeline.profile_screen(wh, fs, sid, null_size=config.null_size, seed=config.seed)
        except LookupError as err:  # a plate of the screen is not profiled yet: the next run picks it up
            waiting[sid] = str(err)
            context.log.info(f"screen {sid}: {err}")
            continue
        rep = pipeline.screen_reports(wh, sid)
        done.append(sid)
        context.log.info(f"screen {sid}: {len(plates)} plates, {int(df.is_hit.sum())} hits "
                         f"in {time.perf_counter() - t0:.1f} s")
        md[f"{sid}_hits"] = int(df.is_hit.sum())
        md[f"{sid}_table"] = dg.MetadataValue.md(
            df.drop(columns=["screen_id", "null_size"]).round(4).to_markdown(index=False))
        for key in ("inverse_q", "dose_response"):
            md[f"{sid}_{key}_png"] = dg.MetadataValue.path(str(rep[key]))
            md[f"{sid}_{key}_plot"] = dg.MetadataValue.md(_png_md(rep[key], f"{sid} {key}"))
    return dg.MaterializeResult(metadata={"screens": dg.MetadataValue.json(done),
                                          "unchanged": dg.MetadataValue.json(unchanged),
                                          "waiting": dg.MetadataValue.json(waiting), **md})


class HitExplanationConfig(dg.Config):
    """Principal components of the LDA space, DMSO splits of the baseline, and how many hits are pictured inline."""

    n_pcs: int = 20
    n_splits: int = 200
    inline_hits: int = 4
    force: bool = False  # explain scopes whose explanations are newer than their q-values again


def inline_metadata(df: pd.DataFrame, key: str, inline_hits: int) -> dict:
    """The table of a scope's explanations and the walk strips of its strongest hits, as asset metadata."""
    from cellrep_core.analysis.render import png_data_uri

    cols = [c for c in ("scope", "scope_id", "model_version", "report_path", "structure_name", "computed_at")
            if c in df.columns]
    md = {f"{key}_table": dg.MetadataValue.md(df.drop(columns=cols).round(3).to_markdown(index=False))}
    shown = df[df.is_hit.fillna(False).astype(bool)].sort_values("effect_size", ascending=False).head(inline_hits)
    for r in shown.itertuples():
        report = Path(r.report_path)
        walk = report.parent / f"{report.stem}_walk.png"
        if not walk.exists():
            continue
        md[f"{key}_{report.stem}_walk"] = dg.MetadataValue.md(
            f"{walk_caption(r.drug, r.concentration, r.separation, r.effect_size)}\n\n"
            f"![{report.stem} walk]({png_data_uri(walk)})")
        md[f"{key}_{report.stem}_report"] = dg.MetadataValue.path(str(report))
    return md


def walk_caption(drug: str, concentration: float | None, separation: float, effect_size: float) -> str:
    """The line above a hit's walk strip (a plate without concentrations has none to show)."""
    conc = "" if concentration is None or concentration != concentration else f" @ {concentration:g} µM"
    return f"**{drug}{conc}** — separation {separation:.2f}, {effect_size:.1f}x the DMSO-split baseline"


@dg.asset(group_name="screens", deps=[screen_qvalues], kinds={"duckdb"}, automation_condition=sql_automation(),
          description="What each drug does, for every screen (and every plate outside a screen): an LDA axis between "
                      "the treatment and DMSO in the base model's profiling space, the real cells along it, and its "
                      "separation against random DMSO splits; table hit_explanations, one HTML report per "
                      "treatment under reports/explain/, the hits' walk strips inline.")
def hit_explanations(context: dg.AssetExecutionContext, config: HitExplanationConfig, warehouse: WarehouseResource,
                     feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    from cellrep_core.analysis import explain as ex

    wh, fs = warehouse.get(), feature_store.get()
    scopes = [("screen", sid) for sid in pipeline.screens(wh)]
    lone = wh.query("SELECT plate_id FROM plates WHERE coalesce(screen_id, '') = '' ORDER BY plate_id")
    scopes += [("plate", pid) for pid in lone.plate_id]
    md: dict = {}
    skipped = {}
    n_done = 0
    unchanged = []
    for scope, sid in scopes:
        if not config.force and pipeline.up_to_date(wh, "hit_explanations", scope, sid):
            unchanged.append(f"{scope} {sid}")  # its q-values did not change since it was explained: its stored
            stored = wh.query("SELECT * FROM hit_explanations WHERE scope = ? AND scope_id = ?", [scope, sid])
            for structure, part in stored.groupby(stored.structure_name.fillna(""), sort=True):  # rows shown again
                md |= inline_metadata(part, f"{sid}_{structure}" if structure else sid, config.inline_hits)
            continue
        plates = pipeline.screens(wh).get(sid, []) if scope == "screen" else [sid]
        found = ex.scope_structures(wh, plates)
        rows = []
        # a plate or screen of several structures: one explanation per structure, each in its base model's space
        for structure in (found if len(found) > 1 else [None]):
            label = f"{scope} {sid}" + (f" ({structure})" if structure else "")
            t0 = time.perf_counter()
            try:
                data = ex.load_scope(wh, fs, structure=structure,
                                     **({"screen_id": sid} if scope == "screen" else {"plate_id": sid}))
                expls = ex.explain_scope(data, n_pcs=config.n_pcs, n_splits=config.n_splits)
            except (LookupError, ValueError) as err:  # not embedded or profiled yet, too few cells: say so, go on
                skipped[label] = str(err)
                context.log.info(f"{label}: not explained: {err}")
                continue
            hits = ex.base_hits(wh, scope, sid, data.structure)
            out_dir = paths.explain_reports_dir(scope, sid) / (structure or "")
            decoder = ex.ScopeDecoder(wh, data)
            part = []
            for i, e in enumerate(expls):
                path = ex.write_report(wh, e, out_dir, decoder)
                part.append({**e.summary(), "is_hit": (e.drug, e.concentration) in hits, "report_path": str(path)})
                context.log.info(f"{label}: explained {e.drug} @ {e.concentration} ({i + 1}/{len(expls)}), "
                                 f"effect size {e.effect_size:.2f}")
            context.log.info(f"{label}: {len(part)} treatments explained in {time.perf_counter() - t0:.1f} s")
            if not part:
                continue
            df = pd.DataFrame(part)
            rows.append(df)
            md |= inline_metadata(df, f"{sid}_{structure}" if structure else sid, config.inline_hits)
        if rows:
            df = pd.concat(rows, ignore_index=True)
            wh.replace("hit_explanations", df, {"scope": scope, "scope_id": sid})
            n_done += len(df)
    return dg.MaterializeResult(metadata={"treatments_explained": n_done, "skipped": dg.MetadataValue.json(skipped),
                                          "unchanged": dg.MetadataValue.json(unchanged),
                                          **md})


@dg.asset(group_name="screens", deps=[screen_qvalues], kinds={"duckdb", "scikitlearn"},
          automation_condition=sql_automation(),
          description="Phenotype classifiers (seed 004) for every screen with cell truth: elastic-net multinomial "
                      "logistic regression on the base model's profiling space and on the hand-crafted features, "
                      "labels = planted effect (strength >= 0.5) or none, validated by holding out plate x well "
                      "groups against shuffled labels (table phenotype_classifiers); KS enrichment of each "
                      "treatment's held-out phenotype probabilities against DMSO, BH over the screen (table "
                      "phenotype_enrichment).")
def phenotype_enrichment(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                         feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    from cellrep_core.analysis.phenotypes import screen_phenotypes
    from cellrep_core.profiling.plots import enrichment_plot, pr_curves_plot

    wh, fs = warehouse.get(), feature_store.get()
    md: dict = {}
    skipped = {}
    for sid in pipeline.screens(wh):
        t0 = time.perf_counter()
        try:
            summary, enrich, reports = screen_phenotypes(wh, fs, sid)
        except (LookupError, ValueError) as err:  # no truth (a real screen), too few wells: say so, go on
            skipped[sid] = str(err)
            context.log.info(f"screen {sid}: no phenotype classifier: {err}")
            continue
        wh.replace_many([("phenotype_classifiers", summary, {"screen_id": sid}),
                         ("phenotype_enrichment", enrich, {"screen_id": sid})])
        out = paths.screen_reports_dir(sid)
        pr = pr_curves_plot(reports, out / "phenotype_pr_curves.png", f"screen {sid}: held-out precision-recall")
        en = enrichment_plot(enrich, out / "phenotype_enrichment.png", f"screen {sid}: phenotype enrichment")
        context.log.info(f"screen {sid}: phenotype classifiers in {time.perf_counter() - t0:.1f} s: " + ", ".join(
            f"{r.feature_set} macro-F1 {r.macro_f1:.2f} (shuffled {r.shuffled_macro_f1:.2f})"
            for r in summary.itertuples()))
        md[f"{sid}_classifiers"] = dg.MetadataValue.md(summary.round(3).to_markdown(index=False))
        md[f"{sid}_enriched"] = dg.MetadataValue.md(
            enrich[enrich.enriched].drop(columns=["screen_id"]).round(4).to_markdown(index=False) or "none")
        md[f"{sid}_pr_curves_plot"] = dg.MetadataValue.md(_png_md(pr, f"{sid} PR curves"))
        md[f"{sid}_enrichment_plot"] = dg.MetadataValue.md(_png_md(en, f"{sid} enrichment"))
    return dg.MaterializeResult(metadata={"skipped": dg.MetadataValue.json(skipped), **md})


class ShapeModeConfig(dg.Config):
    """IDEC epochs and the number of shape modes (0: by silhouette over 2-8)."""

    max_epochs: int = 3
    k: int = 0


@dg.asset(group_name="screens", deps=[screen_qvalues], kinds={"duckdb", "pytorch"}, pool="gpu", op_tags=GPU_OP_TAGS,
          automation_condition=sql_automation(),
          description="Shape modes of every screen (seed 002): deep embedded clustering (IDEC) of its cells on a "
                      "copy of the base model, each treatment's mean soft assignment and its KL divergence from "
                      "DMSO (table mode_kl), per-cell modes (shape_modes), a dendrogram of treatments by profile.")
def screen_shape_modes(context: dg.AssetExecutionContext, config: ShapeModeConfig,
                       warehouse: WarehouseResource) -> dg.MaterializeResult:
    from cellrep_core.analysis.modes import dendrogram_plot, screen_modes

    wh = warehouse.get()
    md: dict = {}
    skipped = {}
    for sid in pipeline.screens(wh):
        try:
            fit, cells, prof, kl = screen_modes(wh, sid, k=config.k or None, max_epochs=config.max_epochs)
        except (LookupError, ValueError) as err:
            skipped[sid] = str(err)
            context.log.info(f"screen {sid}: no shape modes: {err}")
            continue
        wh.replace("shape_modes", cells[["scope", "scope_id", "cell_id", "mode", "soft", "model_version"]],
                   {"scope": "screen", "scope_id": sid})
        wh.replace("mode_kl", kl, {"screen_id": sid})
        fit_row = {"scope": "screen", "scope_id": sid, "k": fit.k, "epochs": fit.epochs,
                   "model_version": kl.model_version.iloc[0]}
        wh.replace("shape_mode_fits", pd.DataFrame([fit_row]), {"scope": "screen", "scope_id": sid})
        png = dendrogram_plot(prof, paths.screen_reports_dir(sid) / "shape_modes_dendrogram.png",
                              f"screen {sid}: {fit.k} shape modes (IDEC)")
        md[f"{sid}_k"] = fit.k
        md[f"{sid}_kl"] = dg.MetadataValue.md(kl.drop(columns=["screen_id", "model_version"]).round(4)
                                              .to_markdown(index=False))
        md[f"{sid}_dendrogram_plot"] = dg.MetadataValue.md(_png_md(png, f"{sid} dendrogram"))
        context.log.info(f"screen {sid}: {fit.k} shape modes after {fit.epochs} epochs")
    return dg.MaterializeResult(metadata={"skipped": dg.MetadataValue.json(skipped), **md})


screen_asset_defs = [screen_qvalues, hit_explanations, phenotype_enrichment, screen_shape_modes]
