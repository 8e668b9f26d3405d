"""Deep embedded clustering parts: Student-t assignment, sharpened target, k choice, mode profiles and KL."""

import numpy as np
import pandas as pd
import torch

from cellrep_core.analysis.modes import choose_k, mode_distributions, soft_assign, target_distribution


def test_soft_assignment_is_student_t_and_target_sharpens_it():
    z = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    mu = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    q = soft_assign(z, mu)
    # alpha = 1: q_ij ∝ 1 / (1 + d²)
    expect = torch.tensor([[1.0, 1 / 10], [1 / 10, 1.0], [1 / 2, 1 / 5]])
    assert torch.allclose(q, expect / expect.sum(1, keepdim=True), atol=1e-6)
    p = target_distribution(q)
    assert torch.allclose(p.sum(1), torch.ones(3))
    assert (p.max(1).values >= q.max(1).values - 1e-7).all()  # confident assignments grow more confident
    assert p[2].argmax() == q[2].argmax()


def test_choose_k_finds_three_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, (40, 4)) for c in (0.0, 4.0, 8.0)])
    k, scores = choose_k(x)
    assert k == 3 and scores[3] > max(v for kk, v in scores.items() if kk != 3)


def test_mode_profiles_and_kl_from_dmso():
    soft = np.array([[0.9, 0.1]] * 10 + [[0.2, 0.8]] * 5 + [[0.85, 0.15]] * 5)
    meta = pd.DataFrame({"drug": ["DMSO"] * 10 + ["hit"] * 5 + ["null"] * 5,
                         "concentration": [0.0] * 10 + [1.0] * 10})
    prof, kl = mode_distributions(meta, soft)
    assert np.allclose(prof.loc["DMSO"].to_numpy(), [0.9, 0.1])
    assert kl.drug.tolist() == ["hit", "null"]
    assert abs(kl.kl_from_dmso[0] - (0.2 * np.log(0.2 / 0.9) + 0.8 * np.log(0.8 / 0.1))) < 1e-9
    assert kl.kl_from_dmso[1] < 0.02 and (kl.n_cells == 5).all()
