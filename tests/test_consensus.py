"""lsedu.consensus: TALL masks and Consensus merging against a loop written from the definition, properties and
bad inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st


def vectors(n: int, seed: int = 0) -> tuple[dict, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(4, 5, generator=g), "b": torch.randn(5, generator=g), "steps": torch.tensor(3)}
    tvs = [{"w": torch.randn(4, 5, generator=g) * (torch.rand(4, 5, generator=g) > 0.3),
            "b": torch.randn(5, generator=g)} for _ in range(n)]
    return base, tvs


def naive_consensus(base, tvs, k, tall_lambda, lam):
    """Entry by entry: each task's TALL vote |tau_t| > lambda_t |tau_MTL - tau_t|, keep the sum where >= k vote."""
    lams = tall_lambda if isinstance(tall_lambda, list) else [tall_lambda] * len(tvs)
    out = {n: t.clone() for n, t in base.items()}
    for n in tvs[0]:
        flat = base[n].flatten().clone()
        for e in range(flat.numel()):
            taus = [float(tv[n].flatten()[e]) for tv in tvs]
            total = sum(taus)
            votes = sum(abs(t) > lt * abs(total - t) for t, lt in zip(taus, lams))
            flat[e] = float(flat[e]) + lam * (total if votes >= k else 0.0)
        out[n] = flat.reshape(base[n].shape)
    return out


@pytest.mark.parametrize("k, tall_lambda, lam", [(2, 0.4, 0.3), (1, 0.2, 1.0), (3, [0.2, 0.5, 0.6], 0.5)])
def test_consensus_merge_matches_the_definition(k, tall_lambda, lam):
    from lsedu.consensus import consensus_merge

    base, tvs = vectors(3)
    got = consensus_merge(base, tvs, k=k, tall_lambda=tall_lambda, lam=lam)
    want = naive_consensus(base, tvs, k, tall_lambda, lam)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=n)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 1000), st.floats(0.0, 2.0))
def test_consensus_merge_properties(n, seed, tall_lambda):
    import lsedu
    from lsedu.consensus import consensus_merge, tall_masks

    base, tvs = vectors(n, seed)
    ta = lsedu.task_arithmetic(base, tvs, lam=0.3)
    for name, t in consensus_merge(base, tvs, k=0, tall_lambda=tall_lambda).items():  # k = 0: task arithmetic
        torch.testing.assert_close(t, ta[name], rtol=1e-5, atol=1e-6)
    for name, t in consensus_merge(base, tvs, k=n + 1, tall_lambda=tall_lambda).items():  # nobody: pretrained
        assert torch.equal(t, base[name])
    masks = tall_masks(tvs, tall_lambda)
    bigger = tall_masks(tvs, tall_lambda + 0.5)  # a larger lambda keeps a subset
    for m, b in zip(masks, bigger):
        assert all(bool((b[name] <= m[name]).all()) for name in m)
    if n == 1:  # one task: the others' sum is 0, so the mask is where the vector moved at all
        assert all(torch.equal(masks[0][name], tvs[0][name] != 0) for name in tvs[0])


@pytest.mark.parametrize("kwargs, match", [({"k": -1}, "k must be a non-negative int"), ({"k": True}, "k must be"),
                                           ({"tall_lambda": [0.4]}, "tall_lambda has 1 value"),
                                           ({"tall_lambda": -0.1}, "tall_lambda must be >= 0"),
                                           ({"lam": float("nan")}, "lam must be finite")])
def test_consensus_merge_bad_inputs(kwargs, match):
    from lsedu.consensus import consensus_merge

    base, tvs = vectors(2)
    with pytest.raises((ValueError, TypeError), match=match):
        consensus_merge(base, tvs, **kwargs)
