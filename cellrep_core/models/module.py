"""The point-cloud autoencoders (SO(3) VN-DGCNN or classical DGCNN encoder) as one Lightning module."""

from __future__ import annotations

import lightning as L
import torch

from cellrep_core.models.config import ModelConfig
from cellrep_core.models.decoders import ClassicalImplicitSDFDecoder, FoldingNetDecoder, ImplicitSDFDecoder
from cellrep_core.models.dgcnn import DGCNNEncoder
from cellrep_core.models.losses import point_loss, sdf_l1
from cellrep_core.models.vn import VNDGCNNEncoder


class PointCloudAutoencoder(L.LightningModule):
    """VN-DGCNN (``encoder="vn_dgcnn"``) or classical DGCNN (``"dgcnn"``) encoder with a FoldingNet
    (punctate) or implicit SDF (polymorphic) decoder. The classical model's FoldingNet output is not rotated
    back and its SDF decoder sees the raw query point next to the code."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg = ModelConfig(**config)
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
        return sdf_l1(self.decode_sdf(enc, batch["query"]), batch["sdf"], self.cfg.sdf_clip)

    def decode_sdf(self, enc: dict[str, torch.Tensor], query: torch.Tensor) -> torch.Tensor:
        """Signed distances ``[B, M]`` at ``[B, M, 3]`` query points from an encoder output."""
        if not self.cfg.equivariant:
            return self.decoder(query, enc["z"])
        return self.decoder(enc["vectors"], query, enc["z"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.per_item_loss(batch).mean()
        self.log("train_loss", loss, prog_bar=False, batch_size=batch["points"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.per_item_loss(batch).mean()
        self.log("val_loss", loss, prog_bar=False, batch_size=batch["points"].shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr)
