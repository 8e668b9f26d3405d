"""The stacked conditional beta-VAE of seed 003: reference shape, then the structure given the reference.

Two Lightning modules over 3-D masks resampled into the nucleus's own frame:

- the **reference beta-VAE** (``encoder="ref_bvae"``) encodes the reference channels (the nucleus, and the
  cell when the data has a ``cell`` channel) into a small latent;
- the **conditional beta-VAE** (``encoder="cond_bvae"``) encodes the structure given a condition, the
  reference latent (posterior mean) concatenated with a one-hot structure label; its decoder reconstructs the
  structure from its latent and the same condition.

Both maximise the beta-weighted ELBO: Bernoulli log-likelihood of the voxels (binary cross-entropy with logits,
summed over the volume) minus ``beta`` x KL(q(z|x) || N(0, I)) (summed over latent dimensions). The stored code
of a cell (``z``) is the posterior mean. The conditional latent of a cell is what its structure holds beyond
what its reference shape predicts: the decoder already receives the reference, so under the KL pressure the
latent does not spend capacity on it (``analysis/statcell.py`` measures how much it still carries).

**Frame.** Cells are resampled into the nucleus's principal-axis frame (centroid at the origin, the longest
axis along the volume's last axis), a cube of side ``2 x half_extent`` voxels on an ``image_size``^3 grid, so
that pose does not cost latent capacity while size stays in voxels (a small nucleus stays small). The axes'
signs are fixed by the structure's offset from the nucleus centroid (positive along the first two axes, the
third by right-handedness).

**Inputs through the model zoo.** A training item carries ``volume`` (``[C, S, S, S]`` float in 0..1) and,
for the conditional model, ``condition`` (``[cond_dim]``); the deterministic input of one cell, as
``embed_items`` passes it to ``forward``, is both flattened into one vector (volume, then condition).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import Dataset

from cellrep_core.models.base import Autoencoder
from cellrep_core.models.config import ModelConfig
from cellrep_core.pointclouds.items import CloudItem

# ------------------------------------------------------------------------------------------ frame


def nucleus_frame(nucleus: np.ndarray, structure: np.ndarray | None = None, cell_id: str = "",
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(centroid_xyz, axes [3, 3])`` of a ZYX nucleus mask: the principal axes as columns (longest first),
    signs fixed by the structure's offset (positive along the first two axes), right-handed."""
    zyx = np.argwhere(np.asarray(nucleus) > 0)
    if len(zyx) < 4:
        raise ValueError(f"cell {cell_id}: the nucleus mask has {len(zyx)} voxels; a frame needs at least 4")
    xyz = zyx[:, ::-1].astype(np.float64)
    centre = xyz.mean(0)
    evals, evecs = np.linalg.eigh(np.cov((xyz - centre).T))
    axes = evecs[:, np.argsort(evals)[::-1]]
    if structure is not None and np.any(structure):
        off = (np.argwhere(np.asarray(structure) > 0)[:, ::-1].astype(np.float64).mean(0) - centre) @ axes
        for k in (0, 1):
            if off[k] < 0:
                axes[:, k] = -axes[:, k]
    if np.linalg.det(axes) < 0:
        axes[:, 2] = -axes[:, 2]
    return centre, axes


def frame_volumes(masks: list[np.ndarray], centre: np.ndarray, axes: np.ndarray, half_extent: float, size: int,
                  ) -> np.ndarray:
    """``[C, S, S, S]`` float32: each ZYX mask resampled (trilinear) on a cube of side ``2 x half_extent`` voxels
    in the frame ``(centre, axes)``; the volume's last axis is the frame's first (longest) axis."""
    u = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    u = u * float(half_extent)
    # frame coordinates (a3, a2, a1) on a ZYX-ordered grid: the last array axis runs along the first frame axis
    c, b, a = np.meshgrid(u, u, u, indexing="ij")
    frame = np.stack([a.ravel(), b.ravel(), c.ravel()], axis=1)
    xyz = centre + frame @ axes.T
    coords = xyz[:, ::-1].T  # z, y, x
    out = np.zeros((len(masks), size, size, size), np.float32)
    for i, m in enumerate(masks):
        vals = ndimage.map_coordinates(np.asarray(m, np.float32) / max(float(np.max(m)), 1e-12), coords, order=1,
                                       mode="constant", cval=0.0)
        out[i] = vals.reshape(size, size, size)
    return np.clip(out, 0.0, 1.0)


def cell_frame_volumes(nucleus: np.ndarray, structure: np.ndarray, half_extent: float, size: int,
                       cell: np.ndarray | None = None, cell_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(reference [C, S, S, S], structure [1, S, S, S])`` of one cell in its nucleus frame; the reference is
    the nucleus (and the cell, when given)."""
    centre, axes = nucleus_frame(nucleus, structure, cell_id)
    refs = [nucleus] + ([cell] if cell is not None else [])
    vols = frame_volumes([*refs, structure], centre, axes, half_extent, size)
    return vols[:-1], vols[-1:]


# ------------------------------------------------------------------------------------------ data


def pack_inputs(item: CloudItem) -> np.ndarray:
    """One cell's deterministic model input: its volume, then its condition (if any), flattened."""
    if item.volume is None:
        raise ValueError(f"cell {item.cell_id}: a beta-VAE item needs a volume")
    parts = [np.asarray(item.volume, np.float32).ravel()]
    if item.condition is not None:
        parts.append(np.asarray(item.condition, np.float32).ravel())
    return np.concatenate(parts)


class StatCellDataset(Dataset):
    """Volumes (and conditions) of cells, the same in every epoch."""

    def __init__(self, items: list[CloudItem], cfg: ModelConfig, train: bool = True, seed: int = 0) -> None:
        for it in items:
            if it.volume is None or (cfg.encoder == "cond_bvae" and it.condition is None):
                raise ValueError(f"cell {it.cell_id}: {cfg.name} needs a volume"
                                 + (" and a condition" if cfg.encoder == "cond_bvae" else ""))
        self.volumes = [torch.from_numpy(np.asarray(it.volume, np.float32)) for it in items]
        dim = max(cfg.cond_dim, 0)
        self.conditions = [torch.from_numpy(np.asarray(it.condition, np.float32)) if it.condition is not None
                           else torch.zeros(dim) for it in items]

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"volume": self.volumes[i], "condition": self.conditions[i]}


# ------------------------------------------------------------------------------------------ network


def _n_down(size: int) -> int:
    """Stride-2 layers from ``size`` down to 4 voxels (at least one)."""
    n, s = 0, size
    while s > 4:
        if s % 2:
            raise ValueError(f"image_size {size} must be 4 x a power of two (8, 16, 32, 64)")
        s //= 2
        n += 1
    return max(n, 1)


class _Encoder(nn.Module):
    def __init__(self, in_ch: int, width: int, size: int, cond_dim: int, latent: int) -> None:
        super().__init__()
        layers, ch = [], in_ch
        self.n_down = _n_down(size)
        for i in range(self.n_down):
            out = width * 2**i
            layers += [nn.Conv3d(ch, out, 4, stride=2, padding=1), nn.BatchNorm3d(out), nn.LeakyReLU(0.2)]
            ch = out
        self.conv = nn.Sequential(*layers)
        self.flat = ch * (size // 2**self.n_down) ** 3
        self.head = nn.Sequential(nn.Linear(self.flat + cond_dim, 2 * latent * 2), nn.LeakyReLU(0.2),
                                  nn.Linear(2 * latent * 2, 2 * latent))
        self.code_dim = latent

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x).flatten(1)
        if c is not None and c.shape[1]:
            h = torch.cat([h, c], 1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class _Decoder(nn.Module):
    def __init__(self, out_ch: int, width: int, size: int, cond_dim: int, latent: int, n_down: int) -> None:
        super().__init__()
        self.ch = width * 2 ** (n_down - 1)
        self.side = size // 2**n_down
        self.fc = nn.Sequential(nn.Linear(latent + cond_dim, 2 * latent * 2), nn.LeakyReLU(0.2),
                                nn.Linear(2 * latent * 2, self.ch * self.side**3), nn.LeakyReLU(0.2))
        layers, ch = [], self.ch
        for i in reversed(range(n_down)):
            out = out_ch if i == 0 else width * 2 ** (i - 1)
            layers.append(nn.ConvTranspose3d(ch, out, 4, stride=2, padding=1))
            if i:
                layers += [nn.BatchNorm3d(out), nn.LeakyReLU(0.2)]
            ch = out
        self.deconv = nn.Sequential(*layers)
        # masks are mostly empty: start from a low occupancy (sigmoid(-4) = 1.8 %) instead of a 50 % haze
        nn.init.constant_(layers[-1].bias, -4.0)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if c is not None and c.shape[1]:
            z = torch.cat([z, c], 1)
        return self.deconv(self.fc(z).view(-1, self.ch, self.side, self.side, self.side))


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per cell and latent dimension ``[B, D]`` (nats)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def reconstruction_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood per cell ``[B]`` (nats), summed over the voxels."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


class StatCellVAE(Autoencoder):
    """Reference beta-VAE (``cfg.encoder == "ref_bvae"``) or conditional beta-VAE (``"cond_bvae"``)."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        c = self.cfg
        self.conditional = c.encoder == "cond_bvae"
        if self.conditional and c.cond_dim < 1:
            raise ValueError(f"config {c.name}: a conditional beta-VAE needs cond_dim >= 1 (reference latent + labels)")
        self.in_ch = 1 if self.conditional else c.ref_channels
        cond = c.cond_dim if self.conditional else 0
        self.encoder = _Encoder(self.in_ch, c.image_channels, c.image_size, cond, c.latent_dim)
        self.decoder = _Decoder(self.in_ch, c.image_channels, c.image_size, cond, c.latent_dim, self.encoder.n_down)

    # -- inputs
    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split packed inputs ``[B, C*S^3 (+ cond_dim)]`` into volumes and conditions."""
        s = self.cfg.image_size
        nvox = self.in_ch * s**3
        vol = x[:, :nvox].reshape(-1, self.in_ch, s, s, s)
        cond = x[:, nvox:] if self.conditional else None
        return vol, cond

    def _batch(self, batch: dict | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, dict):
            return batch["volume"], batch["condition"] if self.conditional else None
        return self.unpack(batch)

    # -- model
    def encode(self, vol: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(vol, cond)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Voxel logits ``[B, C, S, S, S]``."""
        return self.decoder(z, cond)

    def forward(self, batch: dict | torch.Tensor) -> dict[str, torch.Tensor]:
        vol, cond = self._batch(batch)
        mu, logvar = self.encode(vol, cond)
        eye = torch.eye(3, device=mu.device).expand(len(mu), 3, 3)
        return {"z": mu, "mu": mu, "logvar": logvar, "rotation": eye}

    def losses(self, batch: dict | torch.Tensor, sample: bool = True) -> dict[str, torch.Tensor]:
        """Per-cell reconstruction NLL and KL (``[B]``), KL per dimension ``[B, D]`` and the beta-ELBO loss."""
        vol, cond = self._batch(batch)
        mu, logvar = self.encode(vol, cond)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        rec = reconstruction_nll(self.decode(z, cond), vol)
        kld = kl_per_dim(mu, logvar)
        kl = kld.sum(1)
        return {"recon": rec, "kl": kl, "kl_per_dim": kld, "loss": (rec + self.cfg.beta * kl).mean()}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        self.log_dict({"train_loss": out["loss"], "train_recon": out["recon"].mean(), "train_kl": out["kl"].mean()},
                      batch_size=len(out["recon"]), on_epoch=True, on_step=False)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.losses(batch, sample=False)
        self.log_dict({"val_loss": out["loss"], "val_recon": out["recon"].mean(), "val_kl": out["kl"].mean()},
                      batch_size=len(out["recon"]), sync_dist=True)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor | None, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Voxel probabilities ``[n, C, S, S, S]`` of ``n`` draws from the prior, decoded under ``cond`` (one
        condition ``[cond_dim]``, repeated)."""
        self.eval()
        z = torch.randn(n, self.cfg.latent_dim, generator=generator)
        c = None if cond is None else cond.reshape(1, -1).expand(n, -1).float()
        return torch.sigmoid(self.decode(z, c))
