"""Structure given cell shape (seed 003): the nucleus frame, the stacked beta-VAE and its analyses on coupled
cells, the shape residual, and the dataset_statcell asset feeding plate profiling."""

import numpy as np
import pandas as pd
import pytest

from cellrep_core.analysis import statcell as sa
from cellrep_core.data.coupled import REFERENCE_NUCLEUS_SCALE, coupled_cell, generate_coupled_plate
from cellrep_core.models.config import get_config
from cellrep_core.models.statcell import cell_frame_volumes, nucleus_frame
from cellrep_core.statcell import ShapeResidual


def _cells(n, grid=32, size=16, seed=0):
    out = []
    for i in range(n):
        nm, sm, _ = coupled_cell(np.random.default_rng(seed + i), grid, nucleus_scale=REFERENCE_NUCLEUS_SCALE)
        ref, st = cell_frame_volumes(nm, sm, grid / 2, size)
        out.append(sa.CellVolumes(f"c{i:03d}", ref, st, "coupled_nucleolus"))
    return out


def test_coupled_effects_move_nucleus_and_structure_as_planted(tmp_path):
    def volumes(effect):
        infos = [coupled_cell(np.random.default_rng(i), 48, effect)[2] for i in range(12)]
        return (np.mean([i["nucleus_volume"] for i in infos]), np.mean([i["structure_volume"] for i in infos]))

    n0, s0 = volumes("none")
    n1, s1 = volumes("nucleus_size")
    n2, s2 = volumes("structure_size")
    assert n1 / n0 == pytest.approx(0.8**3, rel=0.1) and s1 / s0 == pytest.approx(0.8**3, rel=0.2)
    assert n2 / n0 == pytest.approx(1.0, rel=0.02) and s2 / s0 == pytest.approx(0.6, rel=0.2)
    with pytest.raises(ValueError, match="unknown coupled effect 'grow'"):
        coupled_cell(np.random.default_rng(0), 48, "grow")
    man = generate_coupled_plate(tmp_path, "p1", seed=1, n_dmso=3, n_per_drug=2)
    assert len(man) == 3 + 4 * 2 and set(man.structure_name) == {"coupled_nucleolus"}
    truth = pd.read_csv(tmp_path / "drug_truth.csv")
    assert dict(zip(truth.drug, truth.planted_effect, strict=True)) == {
        "nuc_small": "nucleus_size", "struct_small": "structure_size", "null_a": "none", "null_b": "none"}


def test_nucleus_frame_is_pose_invariant_and_keeps_size():
    nm, sm, info = coupled_cell(np.random.default_rng(3), 48, nucleus_scale=(0.6, 0.6))
    ref, st = cell_frame_volumes(nm, sm, 24.0, 24)
    # the same cell turned by 90 degrees about two axes (an exact rotation of the voxel grid)
    rot = lambda a: np.rot90(np.rot90(a, 1, axes=(1, 2)), 1, axes=(0, 1))  # noqa: E731
    ref2, st2 = cell_frame_volumes(rot(nm), rot(sm), 24.0, 24)
    assert np.abs(ref - ref2).max() < 1e-3 and np.abs(st - st2).max() < 1e-3
    # the frame keeps voxels' size: the frame volume of the nucleus is its real volume (2 voxels per frame voxel)
    assert ref.sum() * (48 / 24) ** 3 == pytest.approx(nm.sum(), rel=0.05)
    assert st.sum() * (48 / 24) ** 3 == pytest.approx(sm.sum(), rel=0.15)
    # the longest principal axis first; right-handed
    _, axes = nucleus_frame(nm, sm)
    assert np.linalg.det(axes) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cell c9: the nucleus mask has 0 voxels"):
        nucleus_frame(np.zeros((8, 8, 8), bool), None, "c9")


def test_stacked_beta_vae_learns_the_coupling_and_generates_by_nucleus_size(tmp_path):
    cells = _cells(40)
    ref_cfg = get_config("statcell_ref_tiny", max_epochs=20)
    cond_cfg = get_config("statcell_cond_tiny", max_epochs=20)
    pair = sa.train_statcell(cells, ref_cfg, cond_cfg, tmp_path)
    assert pair.labels == ["coupled_nucleolus"]
    assert pair.cond.config.cond_dim == ref_cfg.latent_dim + 1
    ref_m, cond_m, labels = sa.load_statcell(pair.ref.path, pair.cond.path)
    # coupling: the structure is reconstructed better with each cell's own reference than with a shuffled one
    c = sa.coupling(ref_m, cond_m, labels, cells)
    assert c["recon_true"] < c["recon_shuffled"] and c["relative_gain"] > 0.03
    # generations for large nuclei hold more structure than for small ones (as the real cells do)
    g = sa.conditional_generation(ref_m, cond_m, labels, cells, n_samples=8)
    assert g["large"]["real_structure_volume"] > 2 * g["small"]["real_structure_volume"]
    assert g["large"]["generated_probability_sum"] > 1.3 * g["small"]["generated_probability_sum"]
    png = sa.generation_png(g, tmp_path / "gen.png")
    assert png[:4] == b"\x89PNG" and (tmp_path / "gen.png").exists()
    kl = sa.kl_per_dimension(cond_m, sa.structure_items(cells, sa.conditions(ref_m, cells, labels)))
    assert len(kl) == cond_cfg.latent_dim and kl.mean_kl.is_monotonic_decreasing and (kl.mean_kl >= 0).all()
    # the same cells and configs reuse both versions; a structure the model never saw is refused by name
    again = sa.train_statcell(cells, ref_cfg, cond_cfg, tmp_path)
    assert again.ref.reused and again.cond.reused and again.cond.version == pair.cond.version
    odd = [sa.CellVolumes("odd1", cells[0].reference, cells[0].structure, "golgi")]
    with pytest.raises(LookupError, match="cell odd1: structure 'golgi' was not in"):
        sa.structure_given_shape(ref_m, cond_m, labels, odd)


def test_beta_sweep_trades_reconstruction_for_rate(tmp_path):
    cells = _cells(24, seed=100)
    pair = sa.train_statcell(cells, get_config("statcell_ref_tiny", max_epochs=4),
                             get_config("statcell_cond_tiny", max_epochs=4), tmp_path)
    sweep = sa.beta_sweep(cells, pair.ref, get_config("statcell_cond_tiny", max_epochs=8), pair.labels,
                          [0.1, 20.0], tmp_path)
    low, high = sweep.iloc[0], sweep.iloc[1]
    assert low.beta == 0.1 and high.beta == 20.0
    assert high.kl < low.kl  # a heavier KL weight spends fewer nats per cell ...
    assert high.active_dims <= low.active_dims
    assert sa.plot_beta_sweep(sweep)[:4] == b"\x89PNG"


def test_shape_residual_removes_what_the_reference_predicts():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 6))
    a = rng.normal(size=(6, 10))
    noise = rng.normal(scale=0.3, size=(400, 10))
    codes = z @ a + 2.0 + noise
    res = ShapeResidual.fit(z, codes)
    r = res.transform(z, codes)
    corr = np.corrcoef(np.c_[z, r].T)[:6, 6:]
    assert np.abs(corr).max() < 0.02
    assert r.var(0).mean() == pytest.approx(0.09, rel=0.2)  # what is left is the noise
    # codes shifted along the coupling by a different reference: the residual moves by < 5 % of the codes' shift
    z2 = z + 1.0
    shift = np.abs(a.sum(0))
    moved = np.abs(res.transform(z2, z2 @ a + 2.0 + noise).mean(0) - r.mean(0))
    assert (moved < 0.05 * shift.max()).all() and np.linalg.norm(moved) < 0.05 * np.linalg.norm(shift)


def test_statcell_asset_profiles_plates_beside_the_other_feature_sets(home, tmp_path, capsys):
    import dagster as dg

    from cellrep_core import structures
    from cellrep_core.data.coupled import COUPLED_STRUCTURE, generate_coupled_dataset
    from cellrep_core.store.feature_store import FeatureStore
    from cellrep_core.store.warehouse import Warehouse
    from orchestration.cli import main
    from orchestration.datasets import CHAIN, materialize_dataset, register_dataset
    from orchestration.demo import _materialize, instance, register_landing_plates

    man = generate_coupled_dataset(tmp_path / "ref", n_cells=24, seed=5)
    assert len(man) == 24
    register_dataset("coupled", tmp_path / "ref" / "manifest.csv", model="sdf_tiny", half_extent_vox=32.0,
                     target_voxel_um=1.0)
    wh, fs = Warehouse(), FeatureStore()
    structures.set_base(wh, COUPLED_STRUCTURE, "coupled")
    cfg = {"ops": {"dataset_model": {"config": {"max_epochs": 1}}, "dataset_pointclouds": {"config": {"workers": 1}}}}
    assert materialize_dataset("coupled", list(CHAIN), cfg).success
    # an unknown data set: a clear error, no traceback
    assert main(["statcell", "nope", "--tiny"]) == 2
    assert "data set 'nope' is not registered" in capsys.readouterr().err
    assert main(["statcell", "coupled", "--tiny", "--betas", "0.5,4"]) == 0
    out = capsys.readouterr().out
    assert "coupling_gain:" in out and "sgs_version: sgs-" in out
    rec = wh.query("SELECT * FROM statcell_models WHERE dataset = 'coupled'")
    assert len(rec) == 1 and rec.n_cells.iloc[0] == 24
    assert list(wh.query("SELECT beta FROM statcell_beta_sweep WHERE dataset = 'coupled' ORDER BY beta").beta) == \
        [0.5, 4.0]
    report = home / "reports" / "coupled" / "statcell"
    assert (report / "generation.png").exists() and (report / "beta_sweep.png").exists()
    sgs = rec.sgs_version.iloc[0]
    table = fs.table_for_dim(int(rec.sgs_dim.iloc[0]))
    assert len(fs.load({"dataset": "coupled", "model_version": sgs}, table=table)[0]) == 24
    # two coupled plates of one screen, routed to the data set: structure_given_shape q-values beside the other
    # feature sets, per plate and pooled over the screen
    from cellrep_core import paths
    from cellrep_core.sqlmodels import load_models, materialize

    inst = instance()
    for k, pid in enumerate(("cp1", "cp2")):
        generate_coupled_plate(paths.landing_plates_dir() / pid, pid, seed=77 + k, n_dmso=8, n_per_drug=6,
                               screen_id="cs1")
    register_landing_plates(inst)
    run_cfg = {"ops": {"plate_qvalues": {"config": {"null_size": 200}}, "plate_model": {"config": {"max_epochs": 1}}}}
    for pid in ("cp1", "cp2"):
        _materialize(inst, dg.AssetSelection.groups("plates"), partition_key=pid, run_config=run_cfg)
    q = wh.query("SELECT * FROM drug_qvalues WHERE plate_id = 'cp1'")
    assert set(q.feature_set) == {"embedding", "handcrafted", "structure_given_shape"}
    s = q[q.feature_set == "structure_given_shape"]
    assert sorted(s.drug) == ["nuc_small", "null_a", "null_b", "struct_small"] and set(s.model_version) == {sgs}
    assert s.q_value.between(0, 1).all()
    n_cells = wh.query("SELECT count(*) n FROM cells WHERE plate_id = 'cp1'").n.iloc[0]
    assert len(fs.load({"plate_id": "cp1", "model_version": sgs}, table=table)[0]) == n_cells == 32
    _materialize(inst, dg.AssetSelection.assets("screen_qvalues"),
                 run_config={"ops": {"screen_qvalues": {"config": {"null_size": 200}}}})
    sq = wh.query("SELECT * FROM screen_qvalues WHERE screen_id = 'cs1' AND feature_set = 'structure_given_shape'")
    assert len(sq) == 4 and set(sq.model_role) == {"structure_given_shape"} and set(sq.n_plates) == {2}
    materialize(wh, next(m for m in load_models() if m.name == "drug_hits_compare"))
    side = wh.query("SELECT * FROM drug_hits_compare WHERE plate_id = 'cp1' ORDER BY drug")
    assert side.structure_given_shape_q.notna().all() and side.base_q.notna().all()
    # a plate whose base model is not the one the residual was fitted on is told how to refit, not mis-profiled
    from cellrep_core import statcell

    res = statcell.embed_plate(wh, fs, "cp1", COUPLED_STRUCTURE, list(s.drug), "coupled", "sdf_tiny-other")
    assert "was fitted on base" in res["skipped"] and "`cellrep statcell coupled` refits it" in res["skipped"]
    assert statcell.plate_versions(wh, "cp1", "coupled", "sdf_tiny-other") == []
    # re-running a plate's embeddings and q-values duplicates nothing
    _materialize(inst, dg.AssetSelection.assets("plate_embeddings", "plate_qvalues"), partition_key="cp1",
                 run_config={"ops": {"plate_qvalues": {"config": {"null_size": 200}}}})
    assert len(fs.load({"plate_id": "cp1", "model_version": sgs}, table=table)[0]) == 32
    q2 = wh.query("SELECT * FROM drug_qvalues WHERE plate_id = 'cp1'")
    key = ["feature_set", "model_version", "drug"]
    pd.testing.assert_frame_equal(q2.drop(columns="computed_at").sort_values(key).reset_index(drop=True),
                                  q.drop(columns="computed_at").sort_values(key).reset_index(drop=True))
