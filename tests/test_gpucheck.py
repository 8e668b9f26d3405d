"""`make gpu-check` on a machine without CUDA: the CPU parts run and pass, each CUDA part says why it is skipped,
and a failing check makes the exit status non-zero. The inference device follows CELLREP_DEVICE."""

import pytest
import torch

from cellrep_core import gpucheck
from cellrep_core.models.inference import inference_device

CUDA = torch.cuda.is_available()


def _lines(out: str, status: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(status)]


def test_gpu_check_runs_the_cpu_parts_and_skips_cuda_with_the_reason(capsys, tmp_path):
    rc = gpucheck.main(["--configs", "sdf_tiny,punctate_so3cnn_tiny", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert not _lines(out, "FAIL")
    passed = _lines(out, "PASS")
    # per config: train/interrupt/resume, fine-tune, embed, benchmark, invariance (both are equivariant)
    assert len(passed) == 10, out
    resumed = [ln for ln in passed if "resume" in ln]
    assert len(resumed) == 2 and all("resumed at epoch 1" in ln or "resumed at epoch 2" in ln for ln in resumed)
    assert any("invariance" in ln and "90° turns" in ln for ln in passed)
    last = out.strip().splitlines()[-1]
    assert last.startswith("gpu_check passed=10 failed=0")
    if not CUDA:
        skipped = _lines(out, "SKIP")
        assert len(skipped) == 4  # two code comparisons, two paper-size steps
        assert all("torch sees no CUDA device" in ln for ln in skipped)


def test_a_failing_check_fails_the_run(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "INVARIANCE_TOLERANCE", 0.0)  # no model is invariant to 0
    rc = gpucheck.main(["--configs", "sdf_tiny", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    assert [ln for ln in _lines(out, "FAIL") if "invariance" in ln]
    assert "failed=1" in out.strip().splitlines()[-1]


def test_inference_device_follows_the_environment(monkeypatch):
    monkeypatch.setenv("CELLREP_DEVICE", "cpu")
    assert inference_device() == torch.device("cpu")
    monkeypatch.delenv("CELLREP_DEVICE")
    assert inference_device().type == ("cuda" if CUDA else "cpu")
    if not CUDA:
        monkeypatch.setenv("CELLREP_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="CELLREP_DEVICE=cuda but torch sees no CUDA device"):
            inference_device()
