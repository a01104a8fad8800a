"""lsedu.isotropic: Iso-C against numpy's SVD, its properties and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsedu.isotropic import iso_c_merge


def vectors(n: int, seed: int = 0, shape=(6, 4)):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(*shape, generator=g), "b": torch.randn(shape[0], generator=g),
            "conv": torch.randn(2, 3, 1, 1, generator=g), "steps": torch.tensor(5)}
    tvs = [{"w": torch.randn(*shape, generator=g), "b": torch.randn(shape[0], generator=g),
            "conv": torch.randn(2, 3, 1, 1, generator=g)} for _ in range(n)]
    return base, tvs


@pytest.mark.parametrize("lam", [1.0, 0.4])
def test_iso_c_matches_the_definition(lam):
    base, tvs = vectors(3)
    got = iso_c_merge(base, tvs, lam=lam)
    total = sum(tv["w"].double().numpy() for tv in tvs)
    u, s, vh = np.linalg.svd(total, full_matrices=False)
    np.testing.assert_allclose(got["w"].numpy(), base["w"].numpy() + lam * s.mean() * (u @ vh), rtol=1e-5, atol=1e-5)
    for n in ("b", "conv"):  # not a matrix: the mean task vector
        torch.testing.assert_close(got[n], base[n] + lam * sum(tv[n] for tv in tvs) / 3)
    assert got["steps"].item() == 5


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 1000), st.floats(0.1, 10.0), st.sampled_from([(6, 4), (3, 7), (5, 5)]))
def test_iso_c_properties(n, seed, scale, shape):
    base, tvs = vectors(n, seed, shape)
    zero = {k: torch.zeros_like(v) for k, v in base.items() if k != "steps"}
    delta = iso_c_merge(zero | {"steps": base["steps"]}, tvs)["w"].double()
    # a flat spectrum: every singular value of the update is the mean of the summed vector's
    total = sum(tv["w"].double() for tv in tvs)
    s_total = torch.linalg.svdvals(total)
    torch.testing.assert_close(torch.linalg.svdvals(delta), torch.full_like(s_total, float(s_total.mean())),
                               rtol=1e-4, atol=1e-4)
    # the same directions: the update lies in the summed vector's row and column spaces
    torch.testing.assert_close(delta @ torch.linalg.pinv(total) @ total, delta, rtol=1e-3, atol=1e-3)
    # scaling every task vector scales the update; the order of the tasks does not matter
    scaled = iso_c_merge(zero | {"steps": base["steps"]}, [{k: scale * v for k, v in tv.items()} for tv in tvs])
    torch.testing.assert_close(scaled["w"].double(), scale * delta, rtol=1e-4, atol=1e-4)
    flipped = iso_c_merge(zero | {"steps": base["steps"]}, tvs[::-1])
    torch.testing.assert_close(flipped["w"].double(), delta, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [({"lam": float("inf")}, "lam must be finite"),
                                           ({"lam": "1"}, "lam must be a real number")])
def test_iso_c_bad_inputs(kwargs, match):
    base, tvs = vectors(2)
    with pytest.raises((ValueError, TypeError), match=match):
        iso_c_merge(base, tvs, **kwargs)
    with pytest.raises(ValueError, match="shape mismatch at tensor 'w'"):
        iso_c_merge(base, [tvs[0], {**tvs[1], "w": torch.zeros(2, 2)}])
