"""The point-cloud autoencoders (SO(3) VN-DGCNN or classical DGCNN encoder) as one Lightning module."""

from __future__ import annotations

import torch

from cellrep_core.models.base import Autoencoder
from cellrep_core.models.decoders import ClassicalImplicitSDFDecoder, FoldingNetDecoder, ImplicitSDFDecoder
from cellrep_core.models.dgcnn import DGCNNEncoder
from cellrep_core.models.losses import chamfer_distance, point_loss, sdf_l1
from cellrep_core.models.vn import VNDGCNNEncoder


class PointCloudAutoencoder(Autoencoder):
    """VN-DGCNN (``encoder="vn_dgcnn"``) or classical DGCNN (``"dgcnn"``) encoder with a FoldingNet
    (punctate) or implicit SDF (polymorphic) decoder. The classical model's FoldingNet output is not rotated
    back and its SDF decoder sees the raw query point next to the code."""

    def __init__(self, config: dict) -> None:
        super().__init__(config)
        cfg = self.cfg
        # fails here, at build, when loss='emd' and geomloss is missing
        self.point_loss = point_loss(cfg.loss) if cfg.kind == "punctate" else None
        if cfg.encoder == "dgcnn":
            self.encoder = DGCNNEncoder(
                latent_dim=cfg.latent_dim,
                hidden=cfg.hidden,
                n_layers=cfg.n_layers,
                k=cfg.k,
                intensity=cfg.kind == "punctate",
            )
        elif cfg.encoder == "vn_dgcnn":
            self.encoder = VNDGCNNEncoder(
                latent_dim=cfg.latent_dim,
                hidden=cfg.hidden,
                n_layers=cfg.n_layers,
                k=cfg.k,
                intensity=cfg.kind == "punctate",
                chunk_points=cfg.chunk_points,
                checkpointing=cfg.checkpointing,
            )
        else:
            raise ValueError(f"model {cfg.name}: encoder {cfg.encoder!r} is not a point-cloud encoder")
        if cfg.kind == "punctate":
            self.decoder = FoldingNetDecoder(
                self.encoder.code_dim, cfg.decoder_hidden, out_dim=4, template=cfg.template
            )
        elif cfg.encoder == "dgcnn":
            self.decoder = ClassicalImplicitSDFDecoder(self.encoder.code_dim, cfg.decoder_hidden)
        else:
            self.decoder = ImplicitSDFDecoder(cfg.latent_dim, cfg.decoder_hidden, code_dim=self.encoder.code_dim)

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encode ``[B, N, D]`` points into vectors, rotation and invariant code ``z``."""
        return self.encoder(points)

    def decode_points(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decode a punctate cloud and rotate it back from the canonical frame into the input frame."""
        y = self.decoder(enc["z"])
        if not self.cfg.equivariant:
            return y
        xyz = y[..., :3] @ enc["rotation"].transpose(1, 2)
        return torch.cat([xyz, y[..., 3:]], dim=-1)

    def per_item_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reconstruction loss of each item of a batch."""
        enc = self.encoder(batch["points"])
        if self.cfg.kind == "punctate":
            return self.point_loss(self.decode_points(enc), batch["points"])
        return sdf_l1(self.decode_sdf(enc, batch["query"]), batch["sdf"], self.cfg.sdf_clip, self.cfg.sdf_inside_weight)

    def decode_sdf(self, enc: dict[str, torch.Tensor], query: torch.Tensor) -> torch.Tensor:
        """Signed distances ``[B, M]`` at ``[B, M, 3]`` query points from an encoder output."""
        if not self.cfg.equivariant:
            return self.decoder(query, enc["z"])
        return self.decoder(enc["vectors"], query, enc["z"])

    # ---- benchmark protocol (see cellrep_core/models/zoo.py): latent, decode_latent, target, error ----
    #
    # The canonical frame is the model's own: for the SO(3) encoder the input seen through the inverse of
    # its learned rotation R (punctate: points x -> Rᵀx; SDF: latent vectors c -> Rᵀc, and the signed
    # distance of canonical query q is the input's signed distance at Rq, read from the stored 32³ grid by
    # trilinear interpolation); for a classical encoder R is the identity and the frame is the input's.
    # SDFs are compared on the same fixed canonical query grid for every cell (every second grid point per
    # axis), so two cells' reconstructions and targets line up point by point.

    EVAL_GRID_STRIDE = 2

    def _eval_query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        side = round(batch["sdf_grid"].shape[1] ** (1 / 3))
        g = torch.linspace(-1.0, 1.0, side, device=batch["points"].device)[:: self.EVAL_GRID_STRIDE]
        zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
        q = torch.stack([xx.reshape(-1), yy.reshape(-1), zz.reshape(-1)], dim=-1)
        return q.unsqueeze(0).expand(batch["points"].shape[0], -1, -1)

    def _rotation(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return enc["rotation"] if self.cfg.equivariant else torch.eye(3, device=enc["z"].device).expand(
            enc["z"].shape[0], 3, 3)

    @torch.no_grad()
    def latent(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decoder input ``[B, D]`` in the canonical frame: the invariant code (FoldingNet, classical SDF
        decoder), or the latent vectors rotated by Rᵀ next to the code (SO(3) SDF decoder)."""
        enc = self.encoder(batch["points"])
        if self.cfg.kind == "punctate" or not self.cfg.equivariant:
            return enc["z"]
        vectors = enc["vectors"] @ enc["rotation"]  # rows c_iᵀ R = (Rᵀ c_i)ᵀ
        return torch.cat([vectors.flatten(1), enc["z"]], dim=1)

    @torch.no_grad()
    def decode_latent(self, lat: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Canonical-frame reconstruction: ``[B, M, 4]`` points, or ``[B, M]`` SDF values on the
        evaluation grid."""
        if self.cfg.kind == "punctate":
            return self.decoder(lat)
        query = self._eval_query(batch)
        if not self.cfg.equivariant:
            return self.decoder(query, lat)
        n_vec = 3 * self.cfg.latent_dim
        vectors = lat[:, :n_vec].reshape(lat.shape[0], self.cfg.latent_dim, 3)
        return self.decoder(vectors, query, lat[:, n_vec:])

    @torch.no_grad()
    def target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The input in the canonical frame: points rotated by Rᵀ, or signed distances at R·q for the
        evaluation grid q (trilinear on the stored grid, border values outside the box), clipped."""
        enc = self.encoder(batch["points"])
        rot = self._rotation(enc)
        if self.cfg.kind == "punctate":
            pts = batch["points"]
            return torch.cat([pts[..., :3] @ rot, pts[..., 3:]], dim=-1)
        query = self._eval_query(batch) @ rot.transpose(1, 2)  # rows (R q)ᵀ
        b, side = query.shape[0], round(batch["sdf_grid"].shape[1] ** (1 / 3))
        vol = batch["sdf_grid"].reshape(b, 1, side, side, side)  # ZYX; grid_sample wants (x, y, z)
        out = torch.nn.functional.grid_sample(
            vol, query.reshape(b, 1, 1, -1, 3), mode="bilinear", padding_mode="border", align_corners=True
        )
        return out.reshape(b, -1).clamp(-self.cfg.sdf_clip, self.cfg.sdf_clip)

    @torch.no_grad()
    def reconstruction_error(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-item Chamfer distance (punctate) or L1 of SDF values clipped to ``±sdf_clip``."""
        if self.cfg.kind == "punctate":
            return chamfer_distance(a, b)
        c = self.cfg.sdf_clip
        return (a.clamp(-c, c) - b.clamp(-c, c)).abs().mean(dim=1)
