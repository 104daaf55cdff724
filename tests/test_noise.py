"""Counter-based noise: Gaussian, reproducible per (seed, draw), independent of batch company."""

import torch
from scipy import stats

from cguide.diffusion.noise import seeded_normal, splitmix64


def test_splitmix64_reference_values():
    # First outputs of the reference SplitMix64 generator seeded with 0 (Vigna's splitmix64.c):
    # state advances by the golden gamma, so output k is splitmix64(k * gamma) in our counter form.
    out = splitmix64(torch.tensor([0], dtype=torch.long))
    assert out.item() & 0xFFFFFFFFFFFFFFFF == 0xE220A8397B1DCDAF


def test_normal_statistics():
    z = seeded_normal(torch.arange(2000), 0, (3, 5, 5)).double().flatten()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    # different draws of one seed are uncorrelated
    a, b = (seeded_normal(torch.arange(500), k, (50,)).double().flatten() for k in (1, 2))
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.02


def test_rows_depend_only_on_their_seed_and_draw():
    batch = seeded_normal(torch.tensor([9, 4, 123456789012]), 7, (2, 3))
    alone = seeded_normal(torch.tensor([4]), 7, (2, 3))
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch[0], batch[1])
    assert not torch.equal(seeded_normal(torch.tensor([4]), 8, (2, 3)), alone)
    assert torch.equal(seeded_normal(torch.tensor([4]), 7, (2, 3), dtype=torch.float64).float(), alone)
