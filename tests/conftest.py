"""Shared fixtures: an isolated CELLREP_HOME per test, tiny data."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh storage root (and Dagster home) for one test."""
    h = tmp_path / "cellrep_home"
    monkeypatch.setenv("CELLREP_HOME", str(h))
    monkeypatch.setenv("DAGSTER_HOME", str(h / "dagster"))
    return h
