"""The Lightning base of every cellrep autoencoder: its config, the training and validation steps over the
model's per-item loss, and the optimizer (Adam, constant or cosine learning rate per the config)."""

from __future__ import annotations

import lightning as L
import torch

from cellrep_core.models.config import ModelConfig


class Autoencoder(L.LightningModule):
    """Subclasses build encoder and decoder from ``self.cfg`` and define ``per_item_loss(batch) -> [B]``; the
    steps log ``train_loss`` / ``val_loss`` (the batch's mean, all-reduced under DDP)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = ModelConfig(**config)

    def per_item_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no per_item_loss")

    def _step(self, batch: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        per_item = self.per_item_loss(batch)
        loss = per_item.mean()
        self.log(name, loss, prog_bar=False, batch_size=per_item.shape[0], sync_dist=True)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train_loss")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val_loss")

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.cfg.lr)
        if self.cfg.lr_schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.cfg.max_epochs, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
