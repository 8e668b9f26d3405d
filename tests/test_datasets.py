"""Data sets as assets: registration with a scale derived from the data, the partitioned dataset_* assets,
the landing sensor, the CLI."""

import numpy as np
import pandas as pd
import pytest
import tifffile

from cellrep_core import datasets, paths
from cellrep_core.ingest import ingest_manifest
from cellrep_core.pointclouds.build import SamplingConfig, build_pointclouds
from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse

FOV_CHANNELS = "cell_labels;nucleus_labels;structure"


def _large_fov(folder):
    """A 24 x 160 x 200 FOV at 0.5 x 0.2 x 0.2 µm whose two cells hold structures ~27 µm long: ~68 voxels from
    their centroid at the native 0.2 µm, beyond the default box half-extent of 32 voxels."""
    folder.mkdir(parents=True, exist_ok=True)
    cells = np.zeros((24, 160, 200), np.uint16)
    cells[2:22, 5:75, 10:190] = 1
    cells[2:22, 85:155, 10:190] = 2
    nuclei = np.zeros_like(cells)
    nuclei[6:18, 20:60, 80:120] = 1
    nuclei[6:18, 100:140, 80:120] = 2
    structure = np.zeros((24, 160, 200), np.uint8)
    structure[8:14, 30:36, 20:160] = 255  # a long tube in cell 1
    structure[8:14, 110:116, 30:170] = 255  # and one in cell 2
    structure[6:10, 140:146, 100:106] = 255  # and a second piece of cell 2
    for name, arr in (("cells", cells), ("nuclei", nuclei), ("structure", structure)):
        tifffile.imwrite(folder / f"{name}.tiff", arr)
    man = folder / "manifest.csv"
    pd.DataFrame([{"cell_id": "fov1", "dataset": "big", "shape_type": "polymorphic", "structure_name": "tube",
                   "channels": FOV_CHANNELS, "path": "cells.tiff;nuclei.tiff;structure.tiff",
                   "voxel_size_zyx_um": "0.5,0.2,0.2", "structure_in": "cell"}]).to_csv(man, index=False)
    return man


def test_scale_derived_at_registration_embeds_what_the_native_scale_quarantines(home, tmp_path):
    man = _large_fov(tmp_path / "big")
    spec = datasets.build_spec("big", man)
    # the tubes reach ~14 µm from their centroids: 14 / (0.9 * 32) ≈ 0.49 µm working voxels
    assert spec.scale_source == "derived"
    assert 13.5 < spec.max_extent_um < 15.0
    assert spec.target_voxel_um == pytest.approx(spec.max_extent_um / (datasets.FIT_FRACTION * 32), rel=1e-3)
    native = ingest_manifest(man, dataset="big", crops_dir=tmp_path / "native")
    derived = ingest_manifest(man, dataset="big", crops_dir=tmp_path / "derived",
                              default_voxel_um=spec.target_voxel_um)
    assert len(native.cells) == len(derived.cells) == 2
    assert (derived.cells.voxel_size_um == spec.target_voxel_um).all()
    assert (native.cells.voxel_size_um == 0.2).all()
    cfg = SamplingConfig(n_surface=256, grid=16)
    bad = build_pointclouds(native.cells, tmp_path / "n.parquet", cfg, n_workers=1)
    good = build_pointclouds(derived.cells, tmp_path / "d.parquet", cfg, n_workers=1)
    assert list(bad.quarantine.reason) == ["structure_too_large"] * 2
    assert len(good.index) == 2 and good.quarantine.empty
    # a value given at registration wins, and the record says so
    fixed = datasets.build_spec("big", man, target_voxel_um=0.6)
    assert (fixed.target_voxel_um, fixed.scale_source) == (0.6, "registration")


def test_registration_refuses_bad_input_with_the_reason(home, tmp_path):
    man = _large_fov(tmp_path / "big")
    for name, why in (("1abc", "letters"), ("drug_plates", "used by the platform"), ("a/b", "letters")):
        with pytest.raises(datasets.DatasetError, match=why):
            datasets.build_spec(name, man)
    with pytest.raises(datasets.DatasetError, match="does not exist"):
        datasets.build_spec("x", tmp_path / "nope.csv")
    with pytest.raises(datasets.DatasetError, match="not registered; known"):
        datasets.build_spec("x", man, model="no_such_config")
    mixed = pd.read_csv(man)
    mixed = pd.concat([mixed, mixed.assign(cell_id="fov2", shape_type="punctate")])
    mixed.to_csv(tmp_path / "big" / "mixed.csv", index=False)
    with pytest.raises(datasets.DatasetError, match="mixes shape types"):
        datasets.build_spec("x", tmp_path / "big" / "mixed.csv")
    with pytest.raises(datasets.DatasetError, match="is not registered"):
        datasets.get(Warehouse(), "never_added")


def _synthetic_set(folder, n=10, seed=3):
    from cellrep_core.data import synthetic

    synthetic.generate_polymorphic_dataset(folder, n_cells=n, seed=seed, grid=32, dataset="mine")
    return folder / "manifest.csv"


def test_dataset_assets_materialize_train_embed_and_rerun_without_duplicates(home, tmp_path):
    import dagster as dg

    from orchestration.datasets import CHAIN, materialize_dataset, register_dataset

    man = _synthetic_set(tmp_path / "mine")
    spec = register_dataset("mine", man, model="sdf_tiny")
    assert spec.scale_source == "native" and spec.target_voxel_um is None
    inst = dg.DagsterInstance.get()
    assert inst.get_dynamic_partitions("datasets") == ["mine"]
    cfg = {"ops": {"dataset_model": {"config": {"max_epochs": 1}}, "dataset_pointclouds": {"config": {"workers": 1}}}}
    res = materialize_dataset("mine", run_config=cfg)
    assert res.success
    assert {e.materialization.asset_key.path[-1] for e in res.get_asset_materialization_events()} == set(CHAIN)
    wh, fs = Warehouse(), FeatureStore()
    models = wh.query("SELECT * FROM models WHERE dataset = 'mine'")
    assert len(models) == 1 and models.model_name.iloc[0] == "sdf_tiny"
    version = models.model_version.iloc[0]
    meta = pd.concat([fs.load({"dataset": "mine"}, table=t)[0] for t in fs.table_names()])
    assert len(meta) == 10 and meta.cell_id.is_unique and set(meta.model_version) == {version}
    # lineage: the materializations carry the partition
    ev = inst.get_latest_materialization_event(dg.AssetKey("dataset_embeddings"))
    assert ev.dagster_event.partition == "mine"
    # again: the model version is reused, no row is duplicated anywhere
    assert materialize_dataset("mine", run_config=cfg).success
    assert len(wh.query("SELECT * FROM models WHERE dataset = 'mine'")) == 1
    assert wh.query("SELECT count(*) n FROM cells WHERE dataset = 'mine'").n.iloc[0] == 10
    meta = pd.concat([fs.load({"dataset": "mine"}, table=t)[0] for t in fs.table_names()])
    assert len(meta) == 10
    # a second data set warm-started from the first: its model's parent is the first's version
    man2 = _synthetic_set(tmp_path / "mine2", n=8, seed=4)
    register_dataset("mine2", man2, warm_start="mine")
    assert materialize_dataset("mine2", run_config=cfg).success
    m2 = wh.query("SELECT * FROM models WHERE dataset = 'mine2'")
    assert list(m2.parent_version) == [version] and m2.model_name.iloc[0] == "sdf_tiny_mine2"


def test_landing_datasets_registers_once_and_rejects_a_bad_manifest_once(home, tmp_path):
    from assets.dataset_landing import scan_landing_datasets
    from cellrep_core.paths import landing_datasets_dir

    root = landing_datasets_dir()
    _large_fov(root / "big")
    (root / "broken").mkdir(parents=True)
    (root / "broken" / "manifest.csv").write_text("cell_id,path\n")  # no channels column
    (root / "half").mkdir()
    (root / "half" / "manifest.csv.tmp").write_text("still being written")
    done, bad, rejected = scan_landing_datasets({}, {})
    assert list(done) == ["big"] and list(bad) == ["broken"] and "fix the manifest" in bad["broken"]
    assert datasets.get(Warehouse(), "big").scale_source == "derived"
    again, bad2, _ = scan_landing_datasets(done, rejected)
    assert again == {} and bad2 == {}  # nothing new, the bad manifest is not reported twice


def test_cli_dataset_add_and_ingest(home, tmp_path, capsys):
    from orchestration.cli import main

    man = _large_fov(tmp_path / "big")
    assert main(["dataset", "add", "1bad", str(man)]) == 2
    assert "letters, digits" in capsys.readouterr().err
    assert main(["dataset", "add", "big", str(man)]) == 0
    out = capsys.readouterr().out
    assert "working voxel 0.4" in out and "derived" in out
    assert main(["ingest", str(man), "--workers", "1"]) == 0  # data set "big" from the manifest's column
    out = capsys.readouterr().out
    assert "big: 2 cells, 2 point clouds, 0 quarantined" in out and "embeddings skipped" in out
    assert paths.pointcloud_path("big", "all").exists()
    assert main(["dataset", "list"]) == 0
    assert "derived" in capsys.readouterr().out


def test_per_cell_scale_fits_cells_of_any_size(home, tmp_path):
    """Registered with --per-cell-scale, every polymorphic cell is meshed in a box of its own size: the large
    tubes embed at the native voxel size, and each cloud reaches 0.9 of its box."""
    from cellrep_core.pointclouds.build import read_pointclouds
    from orchestration.datasets import materialize_dataset, register_dataset

    man = _large_fov(tmp_path / "big")
    spec = register_dataset("big", man, per_cell_scale=True)
    assert (spec.scale_source, spec.target_voxel_um, spec.per_cell_scale) == ("per_cell", None, True)
    assert datasets.get(Warehouse(), "big").per_cell_scale
    res = materialize_dataset("big", ["dataset_cells", "dataset_pointclouds"],
                              {"ops": {"dataset_pointclouds": {"config": {"workers": 1}}}})
    assert res.success
    wh = Warehouse()
    assert wh.query("select count(*) n from quarantine where dataset = 'big'").n.iloc[0] == 0
    assert (wh.query("select voxel_size_um from cells where dataset = 'big'").voxel_size_um == 0.2).all()
    items = read_pointclouds(paths.pointcloud_path("big", "all"))
    assert len(items) == 2
    for it in items:
        assert abs(np.abs(it.points).max() - 0.9) < 0.05  # surface samples reach the cell's own box
