"""Progress lines: done / total, ETA, throttled, first and last always."""

import logging

from cellrep_core.progress import LOGGER, Progress, epoch_progress


def test_progress_reports_eta_and_is_throttled(caplog, monkeypatch):
    clock = iter(float(t) for t in range(0, 1000, 3))  # every call to the clock advances 3 s
    monkeypatch.setattr("cellrep_core.progress.time.perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger=LOGGER), Progress("point clouds of p1", 10, every_s=10) as p:
        for _ in range(10):
            p.update()
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert msgs[-1].startswith("point clouds of p1: 10/10 cells done in")
    # one line about every 10 s of the 30 s, not one per cell
    assert 2 <= len(msgs) <= 4
    mid = msgs[0]
    assert "ETA" in mid and "%" in mid and "elapsed" in mid and "/10 cells" in mid


def test_quick_work_stays_silent(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER), Progress("embedding 8 cells", 8, every_s=10) as p:
        for _ in range(8):
            p.update()
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_epoch_progress_logs_epochs_and_loss(caplog):
    cb = epoch_progress("training sdf_tiny", 3, every_s=0)

    class T:
        current_epoch = 0
        callback_metrics = {"val_loss": 0.25}

    with caplog.at_level(logging.INFO, logger=LOGGER):
        cb.on_train_start(T(), None)
        for _ in range(3):
            cb.on_train_epoch_end(T(), None)
    msgs = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert msgs[0] == "training sdf_tiny: epoch 0/3"
    assert "1/3 epochs" in msgs[1] and "loss 0.2500" in msgs[1]
    assert msgs[-1].startswith("training sdf_tiny: 3/3 epochs done")
