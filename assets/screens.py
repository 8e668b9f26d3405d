"""Screens: drug x concentration q-values over a screen's replicate plates, with the 1/q and dose plots."""

import time

import dagster as dg

from assets.plates import plate_qvalues
from assets.reference import _png_md
from assets.sql_models import sql_automation
from cellrep_core import pipeline
from cellrep_core.profiling.screen import SCREEN_NULL_SIZE
from orchestration.resources import FeatureStoreResource, WarehouseResource


class ScreenProfileConfig(dg.Config):
    """Null size of the screen-level mAP test (REFERENCE.md: at least 100,000) and its seed."""

    null_size: int = SCREEN_NULL_SIZE
    seed: int = 0


@dg.asset(group_name="screens", deps=[plate_qvalues], kinds={"duckdb"}, automation_condition=sql_automation(),
          description="Every screen (plates landed with a screen_id): mAP, p and BH q per drug x concentration over "
                      "its replicate plates for the base model, the fine-tuned models and the hand-crafted "
                      "features; 1/q and dose-response plots under reports/screens/<screen_id>/.")
def screen_qvalues(context: dg.AssetExecutionContext, config: ScreenProfileConfig, warehouse: WarehouseResource,
                   feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    wh, fs = warehouse.get(), feature_store.get()
    md: dict = {}
    done, waiting = [], {}
    for sid, plates in pipeline.screens(wh).items():
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
                                          "waiting": dg.MetadataValue.json(waiting), **md})


screen_asset_defs = [screen_qvalues]
