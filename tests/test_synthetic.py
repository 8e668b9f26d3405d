"""Synthetic data sets (punctate, polymorphic, drug plates) and the cell-file reader/validator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from cellrep_core.data import plates
from cellrep_core.data import synthetic as syn
from cellrep_core.data.cells import MANIFEST_COLUMNS, read_manifest, resolve_cell_path
from cellrep_core.data.images import read_cell_image
from cellrep_core.data.validate import validate_polymorphic, validate_punctate
from cellrep_core.errors import CellInputError

CONN26 = np.ones((3, 3, 3), dtype=bool)
SMALL_DRUGS = {"cmpd_01": "shrink", "cmpd_02": "fragment", "cmpd_03": "elongate", "cmpd_04": "none"}


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def punctate(tmp_path_factory):
    """Two identical runs of a small punctate data set at grid 64."""
    a = tmp_path_factory.mktemp("punct_a")
    b = tmp_path_factory.mktemp("punct_b")
    return (
        a,
        syn.generate_punctate_dataset(a, n_per_rule=3, seed=0, grid=64),
        b,
        syn.generate_punctate_dataset(b, n_per_rule=3, seed=0, grid=64),
    )


@pytest.fixture(scope="module")
def polymorphic(tmp_path_factory):
    """Two identical runs of a small polymorphic data set at grid 48."""
    a = tmp_path_factory.mktemp("poly_a")
    b = tmp_path_factory.mktemp("poly_b")
    return (
        a,
        syn.generate_polymorphic_dataset(a, n_cells=8, seed=1, grid=48),
        b,
        syn.generate_polymorphic_dataset(b, n_cells=8, seed=1, grid=48),
    )


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """One plate with enough cells per drug for stable effect statistics."""
    d = tmp_path_factory.mktemp("plate")
    df = plates.generate_drug_plate(d, "P001", seed=7, n_dmso=12, n_per_drug=10, drugs=SMALL_DRUGS, n_bad=2)
    return d, df


def _masks(out_dir: Path, row) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one polymorphic cell of a manifest row."""
    path = out_dir / row.path
    images = read_cell_image(path, row.channels.split(";"), row.cell_id)
    return validate_polymorphic(images, row.cell_id, path)


def _piece_elongations(structure: np.ndarray, min_voxels: int = 100) -> list[float]:
    """Return sqrt(largest / smallest principal variance) of each 26-connected piece."""
    lab, n = ndimage.label(structure, structure=CONN26)
    out = []
    for k in range(1, n + 1):
        pts = np.argwhere(lab == k).astype(float)
        if len(pts) < min_voxels:
            continue
        ev = np.linalg.eigvalsh(np.cov(pts.T))
        out.append(float(np.sqrt(ev[-1] / ev[0])))
    return out


# ----------------------------------------------------------------------------------------- punctate


def test_punctate_manifest_and_determinism(punctate):
    a, df_a, b, df_b = punctate
    assert list(df_a.columns) == list(MANIFEST_COLUMNS)
    assert len(df_a) == 18
    assert sorted(df_a["label"].unique()) == sorted(syn.PUNCTATE_RULES)
    assert set(df_a["channels"]) == {"raw;nucleus"}
    assert set(df_a["shape_type"]) == {"punctate"}
    assert set(df_a["structure_name"]) == {"synthetic_foci"}
    assert set(df_a["dataset"]) == {"synthetic_punctate"}
    assert (df_a["plate_id"] == "").all() and (df_a["well"] == "").all() and (df_a["drug"] == "").all()
    assert df_a["cell_id"].is_unique and (df_a["voxel_size_um"] == 1.0).all()
    pd.testing.assert_frame_equal(df_a, df_b)
    pd.testing.assert_frame_equal(df_a, read_manifest(a / "manifest.csv"))
    first = df_a["path"].iloc[5]
    assert (a / first).read_bytes() == (b / first).read_bytes()
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "truth_points.parquet"), pd.read_parquet(b / "truth_points.parquet")
    )
    # Re-running into the same folder rewrites the same bytes.
    before = (a / first).read_bytes()
    syn.generate_punctate_dataset(a, n_per_rule=3, seed=0, grid=64)
    assert (a / first).read_bytes() == before


def test_punctate_cell_does_not_depend_on_dataset_size(tmp_path, punctate):
    a, df_a, _, _ = punctate
    df_1 = syn.generate_punctate_dataset(tmp_path, n_per_rule=1, seed=0, grid=64)
    for row in df_1.itertuples():
        assert (tmp_path / row.path).read_bytes() == (a / row.path).read_bytes()
        assert row.seed == int(df_a.set_index("cell_id").loc[row.cell_id, "seed"])


def test_punctate_images_and_truth(punctate):
    a, df, _, _ = punctate
    truth = pd.read_parquet(a / "truth_points.parquet")
    assert list(truth.columns) == ["cell_id", "x", "y", "z"]
    assert set(truth["cell_id"]) == set(df["cell_id"])
    for row in df.itertuples():
        path = a / row.path
        images = read_cell_image(path, row.channels.split(";"), row.cell_id)
        raw, nucleus = validate_punctate(images, row.cell_id, path)
        assert raw.dtype == np.float32 and nucleus.shape == (64, 64, 64)
        assert set(np.unique(images["nucleus"])) == {0, 255}
        # The nucleus stays inside the volume.
        assert not (nucleus[0].any() or nucleus[-1].any() or nucleus[:, 0].any() or nucleus[:, :, -1].any())
        pts = truth.loc[truth["cell_id"] == row.cell_id, ["x", "y", "z"]].to_numpy()
        assert len(pts) == syn.N_SPHERES
        assert pdist(pts).min() >= syn.MIN_CENTRE_DISTANCE - 1e-9
        idx = np.rint(pts).astype(int)
        assert nucleus[idx[:, 2], idx[:, 1], idx[:, 0]].all()
        peaks = raw[idx[:, 2], idx[:, 1], idx[:, 0]]
        assert 1800 < np.median(peaks) < 6000
        assert 80 < np.median(raw[~nucleus]) < 130


def _nucleus_axes_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimate (centre xyz, semi-axes, principal axes as columns) of a solid ellipsoid mask."""
    pts = np.argwhere(mask)[:, ::-1].astype(float)
    centre = pts.mean(axis=0)
    ev, vec = np.linalg.eigh(np.cov(pts.T))
    return centre, np.sqrt(5.0 * ev), vec


def test_punctate_rules_are_distinguishable(punctate):
    a, df, _, _ = punctate
    truth = pd.read_parquet(a / "truth_points.parquet")
    radius: dict[str, list[float]] = {}
    for row in df.itertuples():
        images = read_cell_image(a / row.path, ["raw", "nucleus"], row.cell_id)
        centre, axes, vec = _nucleus_axes_from_mask(images["nucleus"] > 0)
        assert axes[2] > axes[1] > axes[0]  # a >= b >= c recovered from the mask (eigh is ascending)
        pts = truth.loc[truth["cell_id"] == row.cell_id, ["x", "y", "z"]].to_numpy()
        r = np.linalg.norm(((pts - centre) @ vec) / axes, axis=1)
        radius.setdefault(row.label, []).append(float(r.mean()))
    mean_r = {k: float(np.mean(v)) for k, v in radius.items()}
    assert mean_r["radial"] + 0.05 < mean_r["random"] < mean_r["surface"] - 0.05, mean_r
    # Every single cell is already on the right side.
    assert max(radius["radial"]) < min(radius["random"]) and max(radius["random"]) < min(radius["surface"])


def test_punctate_planar_gradient_in_nucleus_frame(punctate):
    a, df, _, _ = punctate
    truth = pd.read_parquet(a / "truth_points.parquet")
    means = {}
    for row in df[df["label"].str.startswith("planar") | (df["label"] == "random")].itertuples():
        # The manifest seed regenerates the cell exactly, which gives its nucleus frame.
        _, _, centres, info = syn.punctate_cell(np.random.default_rng(row.seed), 64, row.label)
        pts = truth.loc[truth["cell_id"] == row.cell_id, ["x", "y", "z"]].to_numpy()
        np.testing.assert_allclose(centres, pts)
        nucleus = info["nucleus"]
        frame = nucleus.to_frame(pts)
        np.testing.assert_allclose(nucleus.to_voxel(frame), pts, atol=1e-9)
        means.setdefault(row.label, []).append(frame.mean(axis=0))
        # Every centre keeps >= 1.5 voxels from the nucleus boundary (dense surface sample).
        u, v = np.meshgrid(np.linspace(0, np.pi, 200), np.linspace(0, 2 * np.pi, 400))
        sphere = np.stack([np.sin(u) * np.cos(v), np.sin(u) * np.sin(v), np.cos(u)], -1).reshape(-1, 3)
        dist, _ = cKDTree(sphere * nucleus.semi_axes).query(frame)
        assert dist.min() >= syn.BOUNDARY_MARGIN - 0.05
    m = {k: np.mean(v, axis=0) for k, v in means.items()}
    assert m["planar_0"][0] > 3.0 and abs(m["planar_0"][1]) < 1.5
    assert m["planar_90"][1] > 2.5 and abs(m["planar_90"][0]) < 1.5
    assert m["planar_45"][0] > 2.0 and m["planar_45"][1] > 1.5
    assert np.all(np.abs(m["random"]) < 1.5)


# ----------------------------------------------------------------------------------------- polymorphic


def test_polymorphic_manifest_determinism_and_labels(polymorphic, tmp_path):
    a, df_a, b, df_b = polymorphic
    assert list(df_a.columns) == list(MANIFEST_COLUMNS)
    assert len(df_a) == 8 and df_a["cell_id"].is_unique
    assert set(df_a["channels"]) == {"nucleus;structure"}
    assert set(df_a["structure_name"]) == {"synthetic_nucleolus"}
    assert set(df_a["shape_type"]) == {"polymorphic"}
    pd.testing.assert_frame_equal(df_a, df_b)
    pd.testing.assert_frame_equal(df_a, read_manifest(a / "manifest.csv"))
    assert (a / df_a["path"].iloc[3]).read_bytes() == (b / df_a["path"].iloc[3]).read_bytes()
    agree = 0
    for row in df_a.itertuples():
        nucleus, structure = _masks(a, row)
        raw = tifffile.imread(a / row.path)
        assert raw.shape == (2, 48, 48, 48) and raw.dtype == np.uint8
        assert set(np.unique(raw)) <= {0, 255}
        # Every piece lies within the nucleus, and the nucleus within the volume.
        assert not (raw[1] > 0)[~nucleus].any()
        assert not (nucleus[0].any() or nucleus[-1].any() or nucleus[:, :, 0].any() or nucleus[:, -1].any())
        _, n = ndimage.label(structure, structure=CONN26)
        assert row.label == str(n) and 1 <= n <= syn.REFERENCE_PIECES[1]
        _, _, info = syn.polymorphic_cell(*_regen_args(row.seed, 48))
        agree += info["n_components"] == info["n_pieces"]
        assert 0.5 * info["total_volume"] < structure.sum() <= 1.05 * info["total_volume"]
    assert agree >= 7
    # A cell's content does not depend on how many cells are generated.
    df_3 = syn.generate_polymorphic_dataset(tmp_path, n_cells=3, seed=1, grid=48)
    pd.testing.assert_frame_equal(df_3, df_a.iloc[:3])
    for row in df_3.itertuples():
        assert (tmp_path / row.path).read_bytes() == (a / row.path).read_bytes()


def _regen_args(seed: int, grid: int):
    """Rebuild polymorphic_cell arguments of a polymorphic data set cell from its seed."""
    rng = np.random.default_rng(seed)
    n_pieces = int(rng.integers(syn.REFERENCE_PIECES[0], syn.REFERENCE_PIECES[1] + 1))
    volume = float(rng.uniform(*syn.REFERENCE_VOLUME)) * (grid / 64) ** 3
    return rng, grid, n_pieces, volume, syn.REFERENCE_ELONGATION


def test_polymorphic_cell_parameters():
    rng = np.random.default_rng(3)
    nucleus, structure, info = syn.polymorphic_cell(rng, 64, 4, 2400.0, (1.0, 2.2))
    assert nucleus.dtype == bool and structure.dtype == bool
    assert not structure[~nucleus].any()
    assert info["n_pieces"] == 4 and len(info["pieces"]) == 4
    assert info["n_components"] == 4
    assert sum(p["volume"] for p in info["pieces"]) == pytest.approx(2400.0)
    assert info["structure_volume"] == structure.sum() and not info["relaxed_placement"]
    nuc = info["nucleus"]
    pieces = info["pieces"]
    assert [p["volume"] for p in pieces] == sorted((p["volume"] for p in pieces), reverse=True)
    for i, p in enumerate(pieces):
        a, b, c = p["semi_axes"]
        assert a / b == pytest.approx(p["elongation"]) and b == pytest.approx(c)
        assert a * b * c * 4 / 3 * np.pi == pytest.approx(p["volume"])
        assert 1.0 <= p["elongation"] <= 2.2
        r = nuc.normalized_radius(nuc.to_frame(np.array(p["center"])))
        assert p["placement"] in ("strict", "voxel")
        if p["placement"] == "strict":
            # centre in the inner 55 % of the nucleus, clear of all earlier pieces
            assert r <= 0.55 + 1e-9
            for q in pieces[:i]:
                gap = np.linalg.norm(np.subtract(p["center"], q["center"]))
                assert gap > max(p["semi_axes"]) + max(q["semi_axes"]) + 1
        else:
            assert r <= 0.85 + 1e-9
    assert pieces[0]["placement"] == "strict"
    # Impossible packings relax instead of failing.
    _, s2, info2 = syn.polymorphic_cell(np.random.default_rng(4), 48, 12, 3000.0 * 0.42, (1.0, 2.2))
    assert s2.any() and len(info2["pieces"]) == 12


# ----------------------------------------------------------------------------------------- drug plates


def test_drug_plate_manifest_truth_and_determinism(plate, tmp_path):
    d, df = plate
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert set(df["dataset"]) == {"drug_plates"} and set(df["plate_id"]) == {"P001"}
    assert df["cell_id"].is_unique
    dmso = df[df["drug"] == "DMSO"]
    assert len(dmso) == 12 + 2 and set(dmso["well"]) == {"B01"} and set(dmso["label"]) == {"control"}
    assert dmso["cell_id"].iloc[0] == "P001_B01_000" and dmso["cell_id"].iloc[-1] == "P001_B01_013"
    wells = df.drop_duplicates("drug").set_index("drug")["well"].to_dict()
    assert wells == {"DMSO": "B01", "cmpd_01": "B02", "cmpd_02": "B03", "cmpd_03": "B04", "cmpd_04": "B05"}
    labels = df.drop_duplicates("drug").set_index("drug")["label"].to_dict()
    assert labels == {"DMSO": "control", **SMALL_DRUGS}
    assert (df.groupby("drug").size().drop("DMSO") == 10).all()
    truth = pd.read_csv(d / "drug_truth.csv", dtype=str)
    assert list(truth.columns) == ["plate_id", "drug", "planted_effect"]
    assert truth.to_dict("records") == [
        {"plate_id": "P001", "drug": k, "planted_effect": v} for k, v in SMALL_DRUGS.items()
    ]
    pd.testing.assert_frame_equal(df, read_manifest(d / "manifest.csv"))
    # Determinism, including the truncated file; smaller plates keep the same cells.
    df2 = plates.generate_drug_plate(tmp_path, "P001", seed=7, n_dmso=12, n_per_drug=2, drugs=SMALL_DRUGS, n_bad=2)
    for cid in ("P001_B01_000", "P001_B01_012", "P001_B01_013", "P001_B03_001"):
        assert (tmp_path / f"{cid}.tiff").read_bytes() == (d / f"{cid}.tiff").read_bytes()
    assert set(df2["cell_id"]) < set(df["cell_id"])


def test_default_drug_plate_and_unknown_effect(tmp_path):
    df = plates.generate_drug_plate(tmp_path, "P9", seed=3, n_dmso=2, n_per_drug=1, n_bad=3, grid=48)
    assert df["drug"].tolist() == ["DMSO"] * 5 + list(plates.DEFAULT_DRUGS)
    truth = pd.read_csv(tmp_path / "drug_truth.csv")
    assert dict(zip(truth["drug"], truth["planted_effect"], strict=True)) == plates.DEFAULT_DRUGS
    reasons = []
    for row in df[df["drug"] == "DMSO"].itertuples():
        try:
            _masks(tmp_path, row)
            reasons.append("ok")
        except CellInputError as exc:
            reasons.append(exc.reason)
    assert reasons == ["ok", "ok", "empty_segmentation", "unreadable", "empty_segmentation"]
    with pytest.raises(ValueError, match="'explode'"):
        plates.generate_drug_plate(tmp_path, "P9", seed=3, drugs={"cmpd_x": "explode"})
    with pytest.raises(ValueError, match="planted effect"):
        plates.plate_cell_parameters(np.random.default_rng(0), "melt")


def test_bad_plate_cells_raise(plate):
    d, df = plate
    empty = df[df["cell_id"] == "P001_B01_012"].iloc[0]
    trunc = df[df["cell_id"] == "P001_B01_013"].iloc[0]
    images = read_cell_image(d / empty["path"], ["nucleus", "structure"], empty["cell_id"])
    with pytest.raises(CellInputError) as err:
        validate_polymorphic(images, empty["cell_id"], d / empty["path"])
    assert err.value.reason == "empty_segmentation" and err.value.cell_id == "P001_B01_012"
    assert str(d / empty["path"]) in err.value.detail
    with pytest.raises(CellInputError) as err:
        read_cell_image(d / trunc["path"], ["nucleus", "structure"], trunc["cell_id"])
    assert err.value.reason == "unreadable" and err.value.stage == "ingest"
    assert "P001_B01_013" in str(err.value)


def test_drug_effects_are_planted(plate):
    d, df = plate
    vol: dict[str, list[int]] = {}
    pieces: dict[str, list[int]] = {}
    elong: dict[str, list[float]] = {}
    for row in df.itertuples():
        if row.cell_id in ("P001_B01_012", "P001_B01_013"):
            continue
        nucleus, structure = _masks(d, row)
        assert not structure[~nucleus].any()
        vol.setdefault(row.label, []).append(int(structure.sum()))
        _, n = ndimage.label(structure, structure=CONN26)
        pieces.setdefault(row.label, []).append(n)
        elong.setdefault(row.label, []).extend(_piece_elongations(structure))
    ratio = np.mean(vol["shrink"]) / np.mean(vol["control"])
    assert 0.45 < ratio < 0.75, ratio
    assert 0.8 < np.mean(vol["none"]) / np.mean(vol["control"]) < 1.25
    assert 0.75 < np.mean(vol["fragment"]) / np.mean(vol["control"]) < 1.3
    assert min(pieces["fragment"]) >= 4 and max(pieces["control"]) <= 3
    assert np.mean(pieces["fragment"]) > np.mean(pieces["control"]) + 2.5
    assert np.median(elong["elongate"]) > 1.5 * np.median(elong["control"]), (elong["elongate"], elong["control"])
    assert np.median(elong["control"]) < 1.6


# ----------------------------------------------------------------------------------------- cells.py


def _write(path: Path, arr: np.ndarray) -> Path:
    tifffile.imwrite(path, arr)
    return path


def _poly_images(grid: int = 24) -> dict[str, np.ndarray]:
    nucleus = np.zeros((grid,) * 3, np.uint8)
    nucleus[4:20, 4:20, 4:20] = 255
    structure = np.zeros_like(nucleus)
    structure[10:13, 10:13, 10:13] = 255
    return {"nucleus": nucleus, "structure": structure}


def test_read_cell_image_ok_and_single_channel(tmp_path):
    imgs = _poly_images()
    p = _write(tmp_path / "c.tiff", np.stack([imgs["nucleus"], imgs["structure"]]))
    out = read_cell_image(p, "nucleus;structure", "c")
    assert list(out) == ["nucleus", "structure"] and out["structure"].shape == (24, 24, 24)
    nucleus, structure = validate_polymorphic(out, "c", p)
    assert nucleus.sum() == 16**3 and structure.sum() == 27
    p1 = _write(tmp_path / "one.tiff", imgs["nucleus"])
    assert list(read_cell_image(p1, ["nucleus"], "one")) == ["nucleus"]


@pytest.mark.parametrize("case", ["missing", "not_tiff", "truncated"])
def test_read_cell_image_unreadable(tmp_path, case):
    p = tmp_path / "x.tiff"
    if case == "not_tiff":
        p.write_text("this is not an image\n")
    elif case == "truncated":
        _write(p, np.stack(list(_poly_images().values())))
        p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(CellInputError) as err:
        read_cell_image(p, ["nucleus", "structure"], "x")
    assert err.value.reason == "unreadable" and str(p) in err.value.detail


def test_read_cell_image_wrong_dimensionality(tmp_path):
    imgs = _poly_images()
    p3 = _write(tmp_path / "zyx.tiff", imgs["nucleus"])
    with pytest.raises(CellInputError) as err:
        read_cell_image(p3, ["nucleus", "structure"], "x")
    assert err.value.reason == "wrong_dimensionality" and "(24, 24, 24)" in err.value.detail
    p4 = _write(tmp_path / "c3.tiff", np.stack([imgs["nucleus"]] * 3))
    with pytest.raises(CellInputError) as err:
        read_cell_image(p4, ["nucleus", "structure"], "x")
    assert err.value.reason == "wrong_dimensionality"
    with pytest.raises(CellInputError) as err:
        validate_polymorphic({"nucleus": imgs["nucleus"], "structure": imgs["structure"][:-1]}, "x", None)
    assert err.value.reason == "wrong_dimensionality"


def test_nan_intensity(tmp_path):
    raw = np.ones((2, 16, 16, 16), np.float32)
    raw[0, 3, 3, 3] = np.nan
    p = _write(tmp_path / "nan.tiff", raw)
    with pytest.raises(CellInputError) as err:
        read_cell_image(p, ["raw", "nucleus"], "n")
    assert err.value.reason == "nan_intensity" and "'raw'" in err.value.detail
    nucleus = np.zeros((16, 16, 16), np.uint8)
    nucleus[4:12, 4:12, 4:12] = 1
    bad = np.ones((16, 16, 16), np.float64)
    bad[5, 5, 5] = np.inf
    with pytest.raises(CellInputError) as err:
        validate_punctate({"raw": bad, "nucleus": nucleus}, "n", p)
    assert err.value.reason == "nan_intensity"


def test_validate_polymorphic_reasons():
    base = _poly_images()

    def reason(**over) -> str:
        imgs = {**base, **over}
        with pytest.raises(CellInputError) as err:
            validate_polymorphic(imgs, "cell", "cell.tiff")
        assert err.value.detail and err.value.cell_id == "cell"
        return err.value.reason

    zeros = np.zeros_like(base["nucleus"])
    outside = zeros.copy()
    outside[0:2, 0:2, 0:2] = 255
    assert reason(structure=zeros) == "empty_segmentation"
    assert reason(structure=outside) == "structure_outside_nucleus"
    assert reason(structure=np.full_like(zeros, 255)) == "all_foreground"
    assert reason(nucleus=zeros) == "empty_nucleus"
    with pytest.raises(CellInputError) as err:
        validate_polymorphic({"nucleus": base["nucleus"], "raw": base["structure"]}, "cell", "cell.tiff")
    assert err.value.reason == "unknown_channel" and "structure" in err.value.detail
    # Structure partly outside the nucleus is clipped to it.
    part = base["structure"].copy()
    part[0:2, 0:2, 0:2] = 255
    _, s = validate_polymorphic({**base, "structure": part}, "cell", None)
    assert s.sum() == 27


def test_validate_punctate_reasons():
    rng = np.random.default_rng(0)
    raw = rng.poisson(100, (24, 24, 24)).astype(np.uint16)
    nucleus = _poly_images()["nucleus"]
    out_raw, out_nuc = validate_punctate({"raw": raw, "nucleus": nucleus}, "p", None)
    assert out_raw.dtype == np.float32 and out_nuc.dtype == bool and out_nuc.sum() == 16**3

    def reason(**over) -> str:
        with pytest.raises(CellInputError) as err:
            validate_punctate({"raw": raw, "nucleus": nucleus, **over}, "p", "p.tiff")
        return err.value.reason

    dark = raw.copy()
    dark[nucleus > 0] = 0
    assert reason(raw=dark) == "empty_intensity"
    assert reason(nucleus=np.zeros_like(nucleus)) == "empty_nucleus"
    assert reason(nucleus=np.ones_like(nucleus)) == "all_foreground"
    with pytest.raises(CellInputError) as err:
        validate_punctate({"raw": raw}, "p", None)
    assert err.value.reason == "unknown_channel"


def test_read_manifest(tmp_path):
    csv = tmp_path / "m.csv"
    pd.DataFrame({"cell_id": ["a", "b"], "path": ["a.tiff", "sub/b.tiff"], "channels": ["x", "x;y"]}).to_csv(
        csv, index=False
    )
    df = read_manifest(csv)
    assert list(df.columns) == list(MANIFEST_COLUMNS)
    assert (df["voxel_size_um"] == 1.0).all() and (df["seed"] == -1).all() and (df["plate_id"] == "").all()
    assert resolve_cell_path(csv, df["path"].iloc[1]) == tmp_path / "sub" / "b.tiff"
    pq = tmp_path / "m.parquet"
    df.assign(extra=[1, 2]).to_parquet(pq, index=False)
    back = read_manifest(pq)
    assert list(back.columns) == [*MANIFEST_COLUMNS, "extra"]
    pd.testing.assert_frame_equal(back.drop(columns="extra"), df)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"cell_id": ["a"], "file": ["a.tiff"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv.*\['path', 'channels'\]"):
        read_manifest(bad)
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"cell_id": ["a", "a"], "path": ["a", "b"], "channels": ["x", "x"]}).to_csv(dup, index=False)
    assert len(read_manifest(dup)) == 2  # repeats are quarantined by ingestion, not fatal here


@pytest.mark.parametrize("effect", plates.PLANTED_EFFECTS)
def test_plate_conditions_stay_inside_the_reference_ranges(effect):
    """A model trained on the reference set must have seen every shape a plate condition can draw."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        n_pieces, volume, (e_low, e_high) = plates.plate_cell_parameters(rng, effect)
        assert syn.REFERENCE_PIECES[0] <= n_pieces <= syn.REFERENCE_PIECES[1]
        assert syn.REFERENCE_VOLUME[0] <= volume <= syn.REFERENCE_VOLUME[1]
        assert syn.REFERENCE_ELONGATION[0] <= e_low < e_high <= syn.REFERENCE_ELONGATION[1]
