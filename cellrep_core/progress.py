"""Progress of long work: done / total, elapsed and ETA, logged on the ``cellrep_core`` logger.

Every stage that takes more than a few seconds (sampling point clouds, training, embedding, permutation tests,
the benchmark, explanations) reports through ``Progress`` or ``epoch_progress``. Messages are throttled (one
every ``every_s`` seconds, and the last when the work took at least half that), so a long loop is never
silent and a short one never floods.
Where they show up: Dagster routes the ``cellrep_core`` logger into the run log (``python_logs`` in the
instance's dagster.yaml, written by ``orchestration/demo.py``), and ``cellrep demo`` prints them in the
terminal.
"""

from __future__ import annotations

import logging
import time

LOGGER = "cellrep_core.progress"
log = logging.getLogger(LOGGER)


def _fmt(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """``with Progress("point clouds of plate_01", total) as p: ... p.update()``."""

    def __init__(self, label: str, total: int, unit: str = "cells", every_s: float = 10.0,
                 logger: logging.Logger | None = None) -> None:
        self.label, self.total, self.unit, self.every_s = label, max(int(total), 0), unit, every_s
        self.log = logger or log
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = -float("inf")

    def __enter__(self) -> Progress:
        self.t0 = self._last = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None and self.done < self.total and time.perf_counter() - self.t0 >= self.every_s / 2:
            self._emit(final=True)

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        final = self.done >= self.total
        # a line every ``every_s`` seconds; the last one only for work that took a while (a loop that ends in a
        # few seconds stays silent: the benchmark embeds dozens of small batches)
        if (final and now - self.t0 >= self.every_s / 2) or (not final and now - self._last >= self.every_s):
            self._emit(final=final, note=note)
            self._last = now

    def message(self, note: str = "") -> str:
        el = time.perf_counter() - self.t0
        tail = f", {note}" if note else ""
        if self.done >= self.total:
            return f"{self.label}: {self.done}/{self.total} {self.unit} done in {_fmt(el)}{tail}"
        eta = el / self.done * (self.total - self.done) if self.done else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_s = _fmt(eta) if self.done else "unknown"
        return (f"{self.label}: {self.done}/{self.total} {self.unit} ({pct:.0f} %), {_fmt(el)} elapsed, "
                f"ETA {eta_s}{tail}")

    def _emit(self, final: bool = False, note: str = "") -> None:
        self.log.info(self.message(note))


def epoch_progress(label: str, max_epochs: int, every_s: float = 10.0):
    """A Lightning callback logging epochs done / max (with the validation loss) and the ETA."""
    import lightning as L

    class EpochProgress(L.Callback):
        def __init__(self) -> None:
            self.p = Progress(label, max_epochs, unit="epochs", every_s=every_s)

        def on_train_start(self, trainer, pl_module) -> None:
            self.p.t0 = time.perf_counter()
            self.p.done = trainer.current_epoch  # a resumed training starts where it stopped
            self.p.log.info("%s: epoch %d/%d", label, trainer.current_epoch, max_epochs)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            m = trainer.callback_metrics
            loss = m.get("val_loss", m.get("train_loss"))
            self.p.update(1, note=f"loss {float(loss):.4f}" if loss is not None else "")

    return EpochProgress()
