"""Image autoencoders on 3D volumes: an SO(3)-steerable escnn encoder and its classical twin.

Volumes are ``[C, S, S, S]`` ZYX arrays (x the last axis, like the images and ``query_grid``); voxel
centres sit on ``linspace(-1, 1, S)`` per axis, so a rotation about the centre of the box is a rotation
of those normalised ``(x, y, z)`` coordinates (``grid_sample(..., align_corners=True)``).

- **Inputs** (:func:`cell_volume`). Polymorphic cells: the stored SDF (``CloudItem.sdf``, on the 32³
  ``query_grid``, in units of the half box, i.e. of ``half_extent_vox`` crop voxels), resampled to
  ``S³`` when ``image_size`` differs and expressed in voxels of the image grid, clipped to ``(-2, 2)``
  (the published clip, in image voxels; on a 32³ grid ±2 voxels = ±0.129 half-box units). Punctate cells:
  the intensity-weighted histogram of the dense cloud's distinct crop voxels (each sampled voxel once,
  weighted by its intensity ``p``) on an ``S³`` grid over ``±PUNCTATE_HALF_EXTENT_VOX`` crop voxels
  about the cloud's centre (one fixed scale for every cell), smoothed by a Gaussian of
  ``PUNCTATE_SMOOTH_VOX`` image voxels and divided by its maximum (values in ``[0, 1]``). Counting
  repeated draws instead would weight voxels by the sampling weight ``exp(25 p)``: on a synthetic cell
  61 % of the 20,480 points sit on its brightest voxel.
  With ``image_input="segmentation"`` a polymorphic cell's image is instead 1 where that resampled SDF is
  negative, 0 elsewhere (the paper benchmarks image models on both).
- **SO(3) encoder** (:class:`SO3CNNEncoder`): ``escnn`` on ``rot3dOnR3``, every layer ``C`` scalar and
  ``C`` vector (frequency-1) fields, ``R3Conv`` 3³, ELU on scalars and escnn's norm-ReLU on vectors. A stride-2
  layer is a 2³ average pool followed by the convolution: both keep the even grid symmetric about its
  centre, so the network commutes exactly with the 24 grid rotations (a strided convolution on an even
  grid samples an off-centre sub-grid). ``z`` = spatial mean of the last layer's scalar fields after an
  invariant head convolution; the rotation comes from two pooled vector fields (Gram–Schmidt).
- **Classical twin** (:class:`CNNEncoder`): the same layout with ``nn.Conv3d`` of the same tensor width
  (4 C channels), ``z`` by global mean pooling, identity rotation.
- **Decoder**: linear → ``[C_top, s, s, s]`` → transposed convolutions to ``S³`` (the encoder's
  channel counts C in reverse); MSE loss. The SO(3) model decodes in its canonical frame and rotates
  the output back with the learned rotation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from escnn import gspaces
from escnn import nn as enn
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from cellrep_core.models.base import Autoencoder
from cellrep_core.models.config import ModelConfig
from cellrep_core.models.vn import rotation_from_vectors
from cellrep_core.pointclouds.items import CloudItem

# Punctate clouds are in crop voxels about the nuclear centroid; the synthetic nuclei reach ~27 voxels
# and the SDF box uses the same default half extent (pointclouds.build.SamplingConfig.half_extent_vox).
PUNCTATE_HALF_EXTENT_VOX = 32.0
# Smoothing of the punctate image (image voxels): at 16^3 (4 crop voxels per image voxel) sigma 0.5 left
# 3 % of voxels above 0.1 and a trained SO(3) demo model explained a third of the variance around the
# mean image; sigma 1 turns the puncta into a density map (9 % above 0.1, 2.5x the variance).
PUNCTATE_SMOOTH_VOX = 1.0
# Share of a cell's intensity allowed outside the box before the cell is refused.
PUNCTATE_MAX_OUTSIDE = 0.01
SDF_CLIP_VOXELS = 2.0

# escnn's frequency-1 irrep of SO(3) on the ZYX grid, expressed in (x, y, z): ``v_xyz = _IRREP1_TO_XYZ @ v``.
# Found by solving ``Q rho(g) = R_g Q`` for the grid's 90° rotations (``tests/test_image_models.py``
# checks that the learned rotation is then equivariant).
_IRREP1_TO_XYZ = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=np.float32)


# ------------------------------------------------------------------------------------------ volumes


def _signed_permutation(rot: np.ndarray, tol: float = 1e-6) -> np.ndarray | None:
    """The integer matrix of a rotation by multiples of 90° about the axes, else ``None``."""
    r = np.rint(rot)
    if np.abs(rot - r).max() > tol or not (np.abs(r).sum(0) == 1).all() or not (np.abs(r).sum(1) == 1).all():
        return None
    return r.astype(int)


def rotate_volumes(vols: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Rotate ``[n, C, S, S, S]`` ZYX volumes about their centre by the ``[3, 3]`` rotation ``rot`` of
    ``(x, y, z)``: ``out(p) = vol(rot.T @ p)``.

    A multiple of 90° about the axes is an exact permutation of voxels (flips and transposes, like
    ``np.rot90``); any other rotation is trilinear (``scipy.ndimage.affine_transform``, order 1, edge
    values outside the box).
    """
    vols = np.asarray(vols)
    rot = np.asarray(rot, dtype=np.float64)
    if vols.ndim != 5 or len(set(vols.shape[2:])) != 1:
        raise ValueError(f"volumes must be [n, C, S, S, S], got shape {vols.shape}")
    # in array index order (z, y, x): input offset = M @ output offset, M = P rot^T P (P reverses axes)
    m = rot.T[::-1, ::-1]
    perm = _signed_permutation(m)
    if perm is not None:
        # input axis a reads output axis b = src[a] with sign s[a]
        src = np.abs(perm).argmax(1)
        sign = perm[np.arange(3), src]
        w = np.flip(vols, axis=tuple(2 + a for a in range(3) if sign[a] < 0))
        # out axis b is w's axis a with src[a] == b
        order = [int(np.flatnonzero(src == b)[0]) for b in range(3)]
        return np.ascontiguousarray(np.transpose(w, (0, 1, *(2 + a for a in order))))
    size = vols.shape[-1]
    c = np.full(3, (size - 1) / 2.0)
    offset = c - m @ c
    out = np.empty(vols.shape, dtype=np.result_type(vols.dtype, np.float32))
    for i in range(vols.shape[0]):
        for ch in range(vols.shape[1]):
            out[i, ch] = ndimage.affine_transform(vols[i, ch], m, offset=offset, order=1, mode="nearest")
    return out


def _resample_grid(vol: np.ndarray, size: int) -> np.ndarray:
    """Trilinear resampling of a cubic ZYX volume on ``linspace(-1, 1, G)`` to ``linspace(-1, 1, size)``."""
    g = vol.shape[0]
    if g == size:
        return vol
    ax = np.linspace(0.0, g - 1.0, size)
    zz, yy, xx = np.meshgrid(ax, ax, ax, indexing="ij")
    return ndimage.map_coordinates(vol, [zz, yy, xx], order=1, mode="nearest")


def sdf_volume(sdf: np.ndarray, size: int, cell_id: str = "") -> np.ndarray:
    """``[1, S, S, S]`` SDF image: the stored grid resampled to ``size``, in image voxels, clipped to ±2."""
    sdf = np.asarray(sdf, dtype=np.float64).reshape(-1)
    g = round(len(sdf) ** (1 / 3))
    if g**3 != len(sdf) or g < 2:
        raise ValueError(f"cell {cell_id}: SDF has {len(sdf)} values, not a cubic grid (rebuild its point cloud)")
    if not np.isfinite(sdf).all():
        raise ValueError(f"cell {cell_id}: SDF holds NaN or infinite values (rebuild its point cloud)")
    vol = _resample_grid(sdf.reshape(g, g, g), size)
    vox = vol / (2.0 / (size - 1))  # half-box units -> voxels of the image grid
    return np.clip(vox, -SDF_CLIP_VOXELS, SDF_CLIP_VOXELS).astype(np.float32)[None]


def segmentation_volume(sdf: np.ndarray, size: int, cell_id: str = "") -> np.ndarray:
    """``[1, S, S, S]`` segmentation image: 1 where the stored SDF, resampled to ``size``, is negative."""
    return (sdf_volume(sdf, size, cell_id) < 0).astype(np.float32)


def punctate_volume(points: np.ndarray, size: int, cell_id: str = "") -> np.ndarray:
    """``[1, S, S, S]`` intensity image of a dense ``[n, 4]`` cloud (x, y, z in crop voxels, intensity)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 4 or len(pts) == 0:
        raise ValueError(f"cell {cell_id}: punctate cloud must be a non-empty [n, 4] array, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"cell {cell_id}: punctate cloud holds NaN or infinite values (rebuild its point cloud)")
    w = np.clip(pts[:, 3], 0.0, None)
    if w.sum() <= 0:
        w = np.ones(len(pts))
    h = PUNCTATE_HALF_EXTENT_VOX
    inside = (np.abs(pts[:, :3]) <= h).all(1)
    outside = 1.0 - w[inside].sum() / w.sum()
    if outside > PUNCTATE_MAX_OUTSIDE:
        raise ValueError(
            f"cell {cell_id}: {outside:.1%} of its intensity lies beyond ±{h:g} voxels of its centre, "
            "outside the image box; crop the cell tighter or raise PUNCTATE_HALF_EXTENT_VOX for the data set"
        )
    # one entry per distinct crop voxel: the cloud repeats bright voxels (sampled ∝ exp(25 p)), and
    # counting the repeats would put most of the image on the brightest voxel
    pts, w = pts[inside], w[inside]
    key = np.rint(pts[:, :3] - pts[0, :3]).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    xyz = key[first] + pts[0, :3]
    edges = np.linspace(-h, h, size + 1)
    hist, _ = np.histogramdd(xyz[:, [2, 1, 0]], bins=(edges, edges, edges), weights=w[first])
    if PUNCTATE_SMOOTH_VOX > 0:
        hist = ndimage.gaussian_filter(hist, PUNCTATE_SMOOTH_VOX, mode="constant")
    return (hist / max(hist.max(), 1e-12)).astype(np.float32)[None]


def cell_volume(item: CloudItem, cfg: ModelConfig) -> np.ndarray:
    """A cell's model input ``[C, S, S, S]`` (C = 1): its SDF or segmentation image (``cfg.image_input``), or
    its punctate intensity image.

    Model versions hash the stored clouds, not these images: a change to the rendering must bump
    ``train.ARCHITECTURE_VERSION`` so that no checkpoint trained on the old images is reused.
    """
    if cfg.kind == "sdf":
        if item.sdf is None:
            raise ValueError(f"cell {item.cell_id}: no SDF grid stored; an SDF image model needs SDF point clouds")
        if cfg.image_input == "segmentation":
            return segmentation_volume(item.sdf, cfg.image_size, item.cell_id)
        return sdf_volume(item.sdf, cfg.image_size, item.cell_id)
    return punctate_volume(item.points, cfg.image_size, item.cell_id)


class ImageDataset(Dataset):
    """Cells as volumes (computed once; images are the same in every epoch)."""

    def __init__(self, items: list[CloudItem], cfg: ModelConfig, train: bool, seed: int = 0) -> None:
        self.cfg, self.train = cfg, train
        self.ids = [it.cell_id for it in items]
        self.volumes = [torch.from_numpy(cell_volume(it, cfg)) for it in items]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"volume": self.volumes[i]}


# ------------------------------------------------------------------------------------------ networks


def layer_plan(cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """Channels (``image_channels`` doubling) and strides (1, 1, 2, 2, ...) of the encoder's layers."""
    n = cfg.n_layers
    strides = [1 if i < 2 else 2 for i in range(n)]
    chans = [cfg.image_channels * 2**i for i in range(n)]
    down = 2 ** sum(s == 2 for s in strides)
    if cfg.image_size % down:
        raise ValueError(
            f"config {cfg.name}: image_size {cfg.image_size} is not divisible by 2^{n - 2} (n_layers {n})"
        )
    return chans, strides


def _rotate_grid(vol: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """``out(p) = vol(rot @ p)`` for ``[B, C, S, S, S]`` volumes and ``[B, 3, 3]`` rotations of (x, y, z)."""
    theta = torch.cat([rot, torch.zeros(rot.shape[0], 3, 1, dtype=rot.dtype, device=rot.device)], dim=2)
    grid = F.affine_grid(theta.to(vol.dtype), list(vol.shape), align_corners=True)
    return F.grid_sample(vol, grid, mode="bilinear", padding_mode="border", align_corners=True)


class ScalarVectorNonLinearity(enn.EquivariantModule):
    """ELU on the ``C`` scalar fields, norm-ReLU on the ``C`` vector fields of ``[C x trivial, C x irrep 1]``.

    The vector part is escnn's ``NormNonLinearity(..., "n_relu")`` (``v * relu(|v| - b) / |v|``, learned
    ``b = exp(log_bias)`` per field), computed with a channel-contiguous sum of squares: escnn's
    ``Tensor.norm`` over a strided size-3 axis took 70 % of the encoder's time on CPU. The test checks it
    against escnn's module.
    """

    def __init__(self, field_type: enn.FieldType, n_scalars: int, n_vectors: int) -> None:
        super().__init__()
        sizes = [r.size for r in field_type.representations]
        if sizes != [1] * n_scalars + [3] * n_vectors:
            raise ValueError("field type must be n_scalars trivial fields followed by n_vectors vector fields")
        self.in_type = self.out_type = field_type
        self.n_scalars, self.n_vectors = n_scalars, n_vectors
        self.log_bias = nn.Parameter(torch.zeros(1, n_vectors, 1, 1, 1, 1))

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        t = x.tensor
        b, spatial = t.shape[0], t.shape[2:]
        s = F.elu(t[:, : self.n_scalars])
        v = t[:, self.n_scalars :].reshape(b, self.n_vectors, 3, *spatial)
        norm = (v * v).sum(2, keepdim=True).clamp_min(1e-20).sqrt()
        v = v * (F.relu(norm - torch.exp(self.log_bias)) / norm)
        return enn.GeometricTensor(torch.cat([s, v.reshape(b, 3 * self.n_vectors, *spatial)], 1), self.out_type)

    def evaluate_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


class SO3CNNEncoder(nn.Module):
    """SO(3)-steerable CNN (escnn ``rot3dOnR3``): invariant code ``z`` and an equivariant rotation."""

    def __init__(self, in_channels: int, channels: list[int], strides: list[int], latent_dim: int) -> None:
        super().__init__()
        gs = gspaces.rot3dOnR3()
        triv, vec = gs.trivial_repr, gs.fibergroup.irrep(1)
        self.in_type = enn.FieldType(gs, [triv] * in_channels)
        layers: list[enn.EquivariantModule] = []
        cur = self.in_type
        for c, s in zip(channels, strides, strict=True):
            if s == 2:
                layers.append(enn.PointwiseAvgPool3D(cur, kernel_size=2, stride=2))
            out = enn.FieldType(gs, [triv] * c + [vec] * c)
            layers.append(enn.R3Conv(cur, out, kernel_size=3, padding=1))
            layers.append(ScalarVectorNonLinearity(out, c, c))
            cur = out
        self.body = enn.SequentialModule(*layers)
        self.head = enn.R3Conv(cur, enn.FieldType(gs, [triv] * latent_dim + [vec] * 2), kernel_size=3, padding=1)
        self.latent_dim = latent_dim
        self.code_dim = latent_dim
        self.register_buffer("irrep_to_xyz", torch.from_numpy(_IRREP1_TO_XYZ))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, C, S, S, S]`` volumes -> ``z [B, latent]``, ``vectors [B, 2, 3]`` (x, y, z), ``rotation``."""
        h = self.head(self.body(enn.GeometricTensor(x, self.in_type))).tensor.mean(dim=(2, 3, 4))
        z = h[:, : self.latent_dim]
        vectors = h[:, self.latent_dim :].reshape(-1, 2, 3) @ self.irrep_to_xyz.T
        return {"z": z, "vectors": vectors, "rotation": rotation_from_vectors(vectors)}


class CNNEncoder(nn.Module):
    """The classical twin: plain ``Conv3d`` of the same tensor width (4 C channels), global mean pooling."""

    def __init__(self, in_channels: int, channels: list[int], strides: list[int], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c, s in zip(channels, strides, strict=True):
            if s == 2:
                layers.append(nn.AvgPool3d(2))
            layers += [nn.Conv3d(c_in, 4 * c, 3, padding=1), nn.ELU()]
            c_in = 4 * c
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv3d(c_in, latent_dim, 3, padding=1)
        self.latent_dim = latent_dim
        self.code_dim = latent_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.head(self.body(x)).mean(dim=(2, 3, 4))
        eye = torch.eye(3, dtype=x.dtype, device=x.device).expand(x.shape[0], 3, 3)
        return {"z": z, "rotation": eye}


class VolumeDecoder(nn.Module):
    """Plain 3D CNN: linear -> ``[C_top, s, s, s]`` -> transposed convolutions (×2 each) -> ``[C, S, S, S]``."""

    def __init__(self, latent_dim: int, channels: list[int], n_up: int, size: int, out_channels: int) -> None:
        super().__init__()
        self.base = size // 2**n_up
        chans = channels[-n_up - 1 :][::-1]
        self.c0 = chans[0]
        self.fc = nn.Linear(latent_dim, self.c0 * self.base**3)
        ups: list[nn.Module] = []
        for i in range(n_up):
            ups += [nn.ConvTranspose3d(chans[i], chans[i + 1], 4, stride=2, padding=1), nn.ELU()]
        self.ups = nn.Sequential(*ups)
        self.out = nn.Conv3d(chans[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.fc(z)).view(-1, self.c0, self.base, self.base, self.base)
        return self.out(self.ups(h))


class ImageAutoencoder(Autoencoder):
    """SO(3)-steerable (``so3_cnn``) or classical (``cnn``) 3D CNN encoder, 3D CNN decoder, MSE loss."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        cfg = self.cfg
        if cfg.family != "image":
            raise ValueError(f"config {cfg.name}: encoder {cfg.encoder!r} is not an image model")
        chans, strides = layer_plan(cfg)
        enc = SO3CNNEncoder if cfg.encoder == "so3_cnn" else CNNEncoder
        self.encoder = enc(1, chans, strides, cfg.latent_dim)
        self.decoder = VolumeDecoder(cfg.latent_dim, chans, sum(s == 2 for s in strides), cfg.image_size, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode ``[B, 1, S, S, S]`` volumes: ``z [B, latent_dim]`` and ``rotation [B, 3, 3]``."""
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` in the input frame (decoded canonically, rotated back for SO(3))."""
        enc = self.encoder(x)
        y = self.decoder(enc["z"])
        return _rotate_grid(y, enc["rotation"].transpose(1, 2)) if self.cfg.equivariant else y

    def per_item_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """MSE of each item's reconstruction."""
        x = batch["volume"]
        return self.reconstruction_error(self.reconstruct(x), x)

    # benchmark protocol (see zoo.py): canonical-frame latent, decoding, target and error
    def latent(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The decoder's input: the invariant code ``z`` (already in the canonical frame)."""
        return self.encoder(batch["volume"])["z"]

    def decode_latent(self, lat: torch.Tensor, batch: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Volumes ``[B, 1, S, S, S]`` in the canonical frame."""
        return self.decoder(lat)

    def target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input in the canonical frame: ``x(R p)`` with the learned rotation ``R`` (identity if classical)."""
        x = batch["volume"]
        if not self.cfg.equivariant:
            return x
        return _rotate_grid(x, self.encoder(x)["rotation"])

    def reconstruction_error(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean squared error per item ``[B]``."""
        return ((a - b) ** 2).flatten(1).mean(1)
