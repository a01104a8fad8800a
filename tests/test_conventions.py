"""lsedu.conventions: each reference implementation's convention by name, reproducing that tool's numbers.

peft and mergekit are called themselves (both are in the test extra, never skipped) and must agree bit for bit.
The two authors' repositories are checked against naive loops written from their rules as book/conventions.md
states them, entry by entry in Python, not against copies of their code.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

import lsedu
from lsedu import conventions as C
from lsedu.topk import count_for_density

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "conventions.md"
SHAPES = {"b.w": (3, 5), "a.bias": (7,), "c.conv": (2, 2, 3), "d.one": (1,)}
TIES = [n for n, c in C.CONVENTIONS.items() if "ties" in c.merges]


def integer_vectors(seed: int, n_tasks: int = 3, shapes=SHAPES, low: int = -3, high: int = 4):
    """Task vectors of small integers times 1/4: many entries tie in magnitude, some are 0, every sum is exact."""
    g = torch.Generator().manual_seed(seed)
    return [{n: torch.randint(low, high, s, generator=g).float() / 4 for n, s in shapes.items()}
            for _ in range(n_tasks)]


def distinct_vector(seed: int, shapes=SHAPES, dtype=torch.float32):
    """One task vector whose magnitudes are all different: no tie anywhere."""
    total = sum(math.prod(s) for s in shapes.values())
    g = torch.Generator().manual_seed(seed)
    values = (torch.randperm(total, generator=g).to(dtype) + 1) / 8
    values = values * torch.where(torch.rand(total, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    out, start = {}, 0
    for n, s in shapes.items():
        out[n] = values[start : start + math.prod(s)].reshape(s)
        start += math.prod(s)
    return out


def base_of(tv, seed: int = 99):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=g).to(t.dtype) for n, t in tv.items()}


# --------------------------------------------------------------------------------- peft, called itself
def peft_ties(tensors, weights, density):
    from peft.utils import merge_utils  # in the test extra: never skipped

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that a density >= 1 prunes nothing
        return merge_utils.ties(tensors, torch.tensor(weights), density, majority_sign_method="total")


@pytest.mark.parametrize("density", [0.0, 0.1, 0.3, 0.5, 2 / 3, 0.99, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_peft_convention_is_peft_ties(density, seed):
    """Per tensor, int(d*n) entries by topk (ties among equal magnitudes included), the sign of the unweighted
    sum (0 elects +1), the weighted agreeing entries over their count: equal to peft's output bit for bit."""
    tvs = integer_vectors(seed)
    weights = [0.7, 1.3, 0.4]
    ours = C.ties_vector(tvs, density, "peft", weights=weights)
    for n in SHAPES:
        assert torch.equal(ours[n], peft_ties([tv[n] for tv in tvs], weights, density)), n
    merged = C.ties_merge(base_of(tvs[0]), tvs, density, "peft", weights=weights, lam=0.5)
    assert all(torch.equal(merged[n], base_of(tvs[0])[n] + 0.5 * ours[n]) for n in SHAPES)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_peft_convention_in_other_dtypes(dtype):
    tvs = [{n: t.to(dtype) for n, t in tv.items()} for tv in integer_vectors(5)]
    ours = C.ties_vector(tvs, 0.3, "peft", weights=[1.0, 0.5, 2.0])
    for n in SHAPES:
        assert ours[n].dtype == dtype
        assert torch.equal(ours[n], peft_ties([tv[n] for tv in tvs], [1.0, 0.5, 2.0], 0.3).to(dtype)), n


@pytest.mark.parametrize("density", [0.0, 0.2, 0.45, 1.0])
def test_peft_trim_mask_is_peft_prune(density):
    from peft.utils import merge_utils

    tv = integer_vectors(3, n_tasks=1)[0]
    mask = C.trim_mask(tv, density, "peft")
    for n, t in tv.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert torch.equal(t * mask[n], merge_utils.prune(t, density, method="magnitude")), n
        assert int(mask[n].sum()) == (t.numel() if density >= 1 else int(density * t.numel()))


# --------------------------------------------------------------------------------- mergekit, called itself
def mergekit_ties(base, finetuned, density, weights, normalize, lam):
    from mergekit.merge_methods.api import merge_state_dicts  # in the test extra: never skipped

    models = {"base": base, **{f"m{i}": ft for i, ft in enumerate(finetuned)}}
    parameters = {"density": density, "weight": {f"m{i}": w for i, w in enumerate(weights)},
                  "normalize": normalize, "lambda": lam}
    return merge_state_dicts(models, "ties", parameters=parameters, base="base")


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.3, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.7, 1.3, 0.4], [2.0, -0.5, 1.0]])
def test_mergekit_convention_is_mergekit_ties(normalize, density, weights):
    """Per tensor, max(1, int(d*n)) entries by argsort, the weights applied before the election, 0 elects +1,
    and normalize dividing by the agreeing weights' sum (or not at all): mergekit's merge bit for bit."""
    tvs = integer_vectors(11)
    base = base_of(tvs[0])
    finetuned = [{n: base[n] + tv[n] for n in base} for tv in tvs]
    deltas = [{n: ft[n] - base[n] for n in base} for ft in finetuned]  # what mergekit subtracts itself
    for lam in (1.0, 0.6):
        ours = C.ties_merge(base, deltas, density, "mergekit", weights=weights, normalize=normalize, lam=lam)
        theirs = mergekit_ties(base, finetuned, density, weights, normalize, lam)
        for n in SHAPES:
            assert torch.equal(ours[n], theirs[n]), (n, lam)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_mergekit_convention_in_other_dtypes(dtype):
    tvs = [{n: t.to(dtype) for n, t in tv.items()} for tv in integer_vectors(12)]
    base = base_of(tvs[0])
    finetuned = [{n: base[n] + tv[n] for n in base} for tv in tvs]
    deltas = [{n: ft[n] - base[n] for n in base} for ft in finetuned]
    ours = C.ties_merge(base, deltas, 0.4, "mergekit", weights=[0.3, 1.0, 0.6])
    theirs = mergekit_ties(base, finetuned, 0.4, [0.3, 1.0, 0.6], True, 1.0)
    assert all(ours[n].dtype == dtype and torch.equal(ours[n], theirs[n]) for n in SHAPES)


@pytest.mark.parametrize("density", [0.0, 0.01, 0.2, 0.5, 1.0])
def test_mergekit_trim_mask_is_mergekit_magnitude(density):
    from mergekit.sparsify import magnitude

    tv = integer_vectors(4, n_tasks=1)[0]
    mask = C.trim_mask(tv, density, "mergekit")
    for n, t in tv.items():
        assert torch.equal(t * mask[n], magnitude(t, density)), n
        assert int(mask[n].sum()) == C.get("mergekit").count(t.numel(), density)


def test_mergekit_and_peft_differ_where_the_documents_say():
    """The same inputs, two tools: mergekit keeps at least one entry and counts the weights in the election."""
    one = [{"w": torch.tensor([4.0, -1.0, 0.5])}, {"w": torch.tensor([-1.0, 3.0, 0.25])}]
    assert C.trim_mask(one[0], 0.2, "peft")["w"].sum() == 0  # int(0.6) = 0
    assert C.trim_mask(one[0], 0.2, "mergekit")["w"].tolist() == [True, False, False]  # max(1, 0)
    # +1 against -1 at weights 1 and 3: peft elects + (unweighted sum 0 >= 0), mergekit - (weighted sum -2)
    tvs = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([-1.0])}]
    assert C.ties_vector(tvs, 1.0, "peft", weights=[1.0, 3.0])["w"].item() == 1.0
    assert C.ties_vector(tvs, 1.0, "mergekit", weights=[1.0, 3.0])["w"].item() == -1.0  # -3 / 3


# --------------------------------------------------------------------------------- the two repositories
def naive_ties_repo(tvs, density, lam, base):
    """The TIES repository's rules, entry by entry: the flattened vector (names sorted); keep |x| >= the
    (K - int(d*K))-th smallest |x|; elect sign(sum), a 0 taking sign(sum of all elected signs); where the sign
    is still 0, the negative entries are the agreeing ones; the mean over the agreeing non-zero entries."""
    order = sorted(tvs[0])
    flats = [[x for n in order for x in tv[n].reshape(-1).tolist()] for tv in tvs]
    K = len(flats[0])
    trimmed = []
    for flat in flats:
        kth = sorted(abs(x) for x in flat)[K - int(K * density) - 1]
        trimmed.append([x if abs(x) >= kth else 0.0 for x in flat])
    sums = [sum(col) for col in zip(*trimmed)]
    elected = [(s > 0) - (s < 0) for s in sums]
    total = sum(elected)
    majority = (total > 0) - (total < 0)
    elected = [majority if e == 0 else e for e in elected]
    merged = []
    for j, e in enumerate(elected):
        agree = [row[j] for row in trimmed if (row[j] > 0 if e > 0 else row[j] < 0)]
        merged.append(sum(agree) / max(1, len(agree)))
    out, start = {}, 0
    for n in order:
        size = tvs[0][n].numel()
        out[n] = base[n] + lam * torch.tensor(merged[start : start + size]).reshape(tvs[0][n].shape)
        start += size
    return out


@pytest.mark.parametrize("density", [0.0, 0.1, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ties_repo_convention_is_its_rules_written_as_loops(density, seed):
    tvs = integer_vectors(seed)
    base = {n: torch.zeros(t.shape) for n, t in tvs[0].items()}
    ours = C.ties_merge(base, tvs, density, "ties_repo", lam=0.5)
    naive = naive_ties_repo(tvs, density, 0.5, base)
    assert all(torch.equal(ours[n], naive[n]) for n in SHAPES)


def test_ties_repo_keeps_every_tie_at_the_threshold_and_one_more_entry():
    """int(d*K) + 1 entries, and every entry equal to the threshold: 3 of 10 at d = 0.2, and 5 with ties."""
    tv = {"b": torch.tensor([1.0, 9.0, 2.0, 8.0, 3.0]), "a": torch.tensor([7.0, 4.0, 6.0, 5.0, 0.5])}
    kept = C.trim_mask(tv, 0.2, "ties_repo")
    assert kept["a"].tolist() == [True, False, False, False, False] and kept["b"].tolist() == [
        False, True, False, True, False]
    tied = {"a": torch.tensor([9.0, 7.0, 7.0, 7.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])}
    assert int(C.trim_mask(tied, 0.2, "ties_repo")["a"].sum()) == 4  # 9 and all three 7s
    assert int(C.trim_mask(tied, 0.2, "lsedu")["a"].sum()) == 2  # lsedu: exactly k = 2, the first 7
    assert C.trim_mask(tied, 0.2, "lsedu")["a"].tolist()[:3] == [True, True, False]


def test_ties_repo_fills_a_cancelled_sign_with_the_vectors_majority():
    """Entry 1's values cancel (+1, -1): the repository gives it the majority sign of the whole vector (+1 here,
    two entries elect +), so it merges +1; lsedu elects no sign there and merges 0; peft and mergekit elect +1."""
    a = {"w": torch.tensor([2.0, 1.0, 3.0, -1.0])}
    b = {"w": torch.tensor([1.0, -1.0, 1.0, -2.0])}
    base = {"w": torch.zeros(4)}
    assert C.ties_merge(base, [a, b], 0.99, "ties_repo")["w"].tolist() == [1.5, 1.0, 2.0, -1.5]
    assert C.ties_merge(base, [a, b], 1.0, "lsedu")["w"].tolist() == [1.5, 0.0, 2.0, -1.5]
    assert C.ties_vector([a, b], 1.0, "peft")["w"].tolist() == [1.5, 1.0, 2.0, -1.5]
    # a balanced vector: the majority is 0 too, and the repository's rule takes the negative value
    c, d = {"w": torch.tensor([1.0, 2.0, -2.0])}, {"w": torch.tensor([-1.0, 1.0, -1.0])}
    assert C.ties_merge({"w": torch.zeros(3)}, [c, d], 0.99, "ties_repo")["w"].tolist() == [-1.0, 1.5, -1.5]


def naive_stitch_repo_mask(tv, density):
    """|tau| > the int(s*n)-th largest |tau| over all tensors: no tie of the threshold."""
    values = sorted((abs(x) for t in tv.values() for x in t.reshape(-1).tolist()), reverse=True)
    threshold = values[int(density * len(values)) - 1]
    return {n: torch.tensor([abs(x) > threshold for x in t.reshape(-1).tolist()]).reshape(t.shape)
            for n, t in tv.items()}


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stitch_repo_convention_is_its_rules_written_as_loops(density, seed):
    tvs = integer_vectors(seed, n_tasks=4)
    base = base_of(tvs[0])
    masks = [C.trim_mask(tv, density, "localize_stitch_repo") for tv in tvs]
    for tv, m in zip(tvs, masks):
        assert all(torch.equal(m[n], naive_stitch_repo_mask(tv, density)[n]) for n in SHAPES)
    merged = C.localize_stitch(base, tvs, density, "localize_stitch_repo")
    for n in SHAPES:  # theta_pre + sum_i tau_i * gamma_i / (number of masks covering the entry)
        flat = []
        for j in range(base[n].numel()):
            cover = sum(bool(m[n].reshape(-1)[j]) for m in masks)
            flat.append(sum(float(tv[n].reshape(-1)[j]) / cover for tv, m in zip(tvs, masks)
                            if m[n].reshape(-1)[j]) if cover else 0.0)
        want = base[n] + torch.tensor(flat).reshape(base[n].shape)
        assert torch.allclose(merged[n], want, rtol=0, atol=1e-6), n
    assert all(torch.allclose(merged[n], lsedu.stitch(base, tvs, masks)[n], rtol=0, atol=1e-6) for n in SHAPES)


def test_stitch_repo_leaves_out_every_tie_and_keeps_k_minus_one():
    tv = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0]), "b": torch.tensor([1.0, 0.5, 0.25, 6.0, 0.1, 0.2])}
    assert int(C.trim_mask(tv, 0.3, "localize_stitch_repo")["a"].sum() +
               C.trim_mask(tv, 0.3, "localize_stitch_repo")["b"].sum()) == 2  # int(3) - 1: 6 and 5
    tied = {"a": torch.tensor([9.0, 7.0, 7.0, 7.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])}
    assert C.trim_mask(tied, 0.3, "localize_stitch_repo")["a"].tolist() == [True] + [False] * 9  # no 7
    assert int(C.trim_mask(tied, 0.3, "lsedu")["a"].sum()) == 3


def test_stitch_with_given_masks_follows_the_convention():
    taus = [torch.tensor([2.0, 3.0, 5.0, 7.0]), torch.tensor([4.0, 6.0, 1.0, 1.0]), torch.tensor([8.0, 9.0, 3.0, 1.0])]
    masks = [torch.tensor([True, True, False, False]), torch.tensor([True, True, False, False]),
             torch.tensor([False, True, True, False])]
    base = {"w": torch.ones(4)}
    args = (base, [{"w": t} for t in taus], [{"w": m} for m in masks])
    want = torch.tensor([1 + (2 + 4) / 2, 1 + (3 + 6 + 9) / 3, 1 + 3.0, 1.0])
    for convention in ("lsedu", "localize_stitch_repo"):
        assert torch.allclose(C.stitch(*args, convention)["w"], want, rtol=0, atol=1e-6)
    assert torch.equal(C.stitch(*args, "lsedu")["w"], lsedu.stitch(*args)["w"])


# --------------------------------------------------------------------------------- lsedu delegates
def test_lsedu_convention_is_lsedu_itself():
    tvs = integer_vectors(7)
    base = base_of(tvs[0])
    a, b = C.ties_merge(base, tvs, 0.3, "lsedu", lam=0.8), lsedu.ties_merge(base, tvs, 0.3, lam=0.8)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)
    trimmed = [lsedu.trim(tv, 0.3) for tv in tvs]
    v = C.ties_vector(tvs, 0.3)
    assert all(torch.equal(v[n], lsedu.disjoint_mean(trimmed, lsedu.elect_sign(trimmed))[n]) for n in SHAPES)
    a, b = C.localize_stitch(base, tvs, 0.2), lsedu.stitch_dataless(base, tvs, 0.2)
    assert all(torch.equal(a[n], b[n]) for n in SHAPES)
    assert all(torch.equal(C.trim_mask(tvs[0], 0.2)[n], lsedu.localize_dataless(tvs[0], 0.2)[n]) for n in SHAPES)


# --------------------------------------------------------------------------------- properties
DENSITIES = st.floats(0.01, 0.99, allow_nan=False)


@given(seed=st.integers(0, 10_000), density=DENSITIES, name=st.sampled_from(list(C.CONVENTIONS)))
def test_each_convention_keeps_its_count_when_nothing_ties(seed, density, name):
    tv = distinct_vector(seed)
    c = C.get(name)
    sizes = [t.numel() for t in tv.values()] if c.per_tensor else [sum(t.numel() for t in tv.values())]
    want = sum(c.count(n, density) for n in sizes)
    if name == "localize_stitch_repo" and int(density * sizes[0]) < 1:
        with pytest.raises(ValueError, match=r"^density \(convention 'localize_stitch_repo'\) keeps int"):
            C.trim_mask(tv, density, name)
        return
    assert int(sum(m.sum() for m in C.trim_mask(tv, density, name).values())) == want
    if name == "lsedu":
        assert want == count_for_density(sizes[0], density)


@given(seed=st.integers(0, 10_000), density=DENSITIES)
def test_the_global_masks_nest(seed, density):
    """With ties or without: Localize-and-Stitch's repository keeps a subset of lsedu's k, and the TIES
    repository a superset (its threshold is lower and it keeps every tie)."""
    tv = integer_vectors(seed, n_tasks=1)[0]
    n = sum(t.numel() for t in tv.values())
    inner = C.trim_mask(tv, density, "localize_stitch_repo") if int(density * n) >= 1 else None
    middle, outer = C.trim_mask(tv, density, "lsedu"), C.trim_mask(tv, density, "ties_repo")
    for name in tv:
        assert not (middle[name] & ~outer[name]).any()
        assert inner is None or not (inner[name] & ~middle[name]).any()


@given(seed=st.integers(0, 10_000), density=st.floats(0, 1), name=st.sampled_from(TIES),
       order=st.permutations([0, 1, 2]))
def test_the_order_of_the_task_vectors_does_not_matter(seed, density, name, order):
    """Exactly, on values whose sums are exact; the weights travel with their task vectors."""
    c = C.get(name)
    try:
        c.check_density(density)
    except ValueError:
        return
    tvs = integer_vectors(seed)
    weights = [0.5, 1.5, 2.0] if c.weights != "none" else None
    base = {n: torch.zeros(t.shape) for n, t in tvs[0].items()}
    first = C.ties_merge(base, tvs, density, name, weights=weights)
    again = C.ties_merge(base, [tvs[i] for i in order], density, name,
                         weights=None if weights is None else [weights[i] for i in order])
    assert all(torch.equal(first[n], again[n]) for n in SHAPES)


@given(seed=st.integers(0, 10_000), density=st.floats(0.05, 1))
def test_inputs_are_never_modified(seed, density):
    tvs = integer_vectors(seed)
    base = base_of(tvs[0])
    copies = [{n: t.clone() for n, t in tv.items()} for tv in [base, *tvs]]
    for name in TIES:
        C.ties_merge(base, tvs, min(density, 0.99), name)
    C.localize_stitch(base, tvs, density, "localize_stitch_repo")
    for before, after in zip(copies, [base, *tvs]):
        assert all(torch.equal(before[n], after[n]) for n in before)


# --------------------------------------------------------------------------------- bad inputs
TV = {"w": torch.tensor([1.0, -2.0, 3.0, 0.5])}


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: C.trim_mask(TV, 0.5, "peft_repo"), ValueError, r"^convention must be one of \['lsedu', 'ties_repo'"),
    (lambda: C.trim_mask(TV, 0.5, None), ValueError, r"^convention must be one of"),
    (lambda: C.trim_mask(TV, 1.0, "ties_repo"), ValueError,
     r"^density \(convention 'ties_repo'\) must be a finite number in \[0, 1\), got 1\.0"),
    (lambda: C.trim_mask(TV, 0.0, "lsedu"), ValueError, r"^density \(convention 'lsedu'\) must be .* \(0, 1\]"),
    (lambda: C.trim_mask(TV, 1.5, "mergekit"), ValueError, r"^density \(convention 'mergekit'\) must be"),
    (lambda: C.trim_mask(TV, float("nan"), "peft"), ValueError, r"^density \(convention 'peft'\) must be"),
    (lambda: C.trim_mask(TV, "0.5", "peft"), TypeError, r"^density \(convention 'peft'\) must be a finite number"),
    (lambda: C.trim_mask(TV, 0.1, "localize_stitch_repo"), ValueError,
     r"^density \(convention 'localize_stitch_repo'\) keeps int\(0\.1 \* 4\) = 0 entries"),
    (lambda: C.trim_mask({"e": torch.zeros(0)}, 0.5, "ties_repo"), ValueError,
     r"^task_vector holds no entries \(every tensor is empty\): convention 'ties_repo'"),
    (lambda: C.trim_mask({"w": torch.tensor([1, 2])}, 0.5, "peft"), TypeError,
     r"^task_vector\['w'\] has dtype torch\.int64"),
    (lambda: C.trim_mask({"w": torch.tensor([1.0, float("inf")])}, 0.5, "peft"), ValueError,
     r"^task_vector\['w'\] has 1 non-finite"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV, {"v": torch.ones(4)}], 0.5, "peft"), ValueError,
     r"^task_vectors\[1\] has tensor\(s\) that task_vectors\[0\] lacks: 'v'"),
    (lambda: C.ties_merge({"w": torch.zeros(3)}, [TV], 0.5, "mergekit"), ValueError,
     r"^shape mismatch at tensor 'w': base has \(3,\), task_vectors\[0\] has \(4,\)"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "ties_repo", weights=[1.0]), ValueError,
     r"^weights apply to conventions \['peft', 'mergekit'\] only; convention 'ties_repo'"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "lsedu", weights=[1.0]), ValueError,
     r"^weights apply to conventions"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV, TV], 0.5, "peft", weights=[1.0]), ValueError,
     r"^weights must have one number per task vector \(2\), got 1"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "mergekit", weights=[float("inf")]), ValueError,
     r"^weights\[0\] must be finite"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "mergekit", weights=torch.ones(1)), TypeError,
     r"^weights must be a list of numbers, got Tensor"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "peft", normalize=False), ValueError,
     r"^normalize=False is mergekit's option"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "mergekit", normalize="no"), TypeError,
     r"^normalize must be True or False, got 'no'"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "mergekit", lam=float("nan")), ValueError,
     r"^lam must be finite"),
    (lambda: C.ties_merge({"w": torch.zeros(4)}, [TV], 0.5, "localize_stitch_repo"), ValueError,
     r"^convention 'localize_stitch_repo' has no ties merge \(it has stitch: use conventions\.stitch\)"),
    (lambda: C.localize_stitch({"w": torch.zeros(4)}, [TV], 0.5, "peft"), ValueError,
     r"^convention 'peft' has no stitch merge \(it has ties: use conventions\.ties_merge\)"),
    (lambda: C.ties_vector([], 0.5, "peft"), ValueError, r"^task_vectors is empty"),
    (lambda: C.stitch({"w": torch.zeros(4)}, [TV], [{"w": torch.ones(4)}], "localize_stitch_repo"), TypeError,
     r"^masks\[0\]\['w'\] must be a torch\.bool mask"),
    (lambda: C.stitch({"w": torch.zeros(4)}, [TV], [], "localize_stitch_repo"), ValueError,
     r"^masks must be a list with one mask per task vector \(1\), got 0"),
])
def test_bad_inputs_raise_one_line_errors_naming_the_culprit(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------- the book page
def test_the_page_holds_the_registry_tables():
    text = PAGE.read_text()
    assert C.generated_part(text) == C.book_block(), (
        "book/conventions.md's tables differ from lsedu.conventions; regenerate them with: "
        "python -m lsedu.conventions --update book/conventions.md")
    assert all(f"`{name}`" in text for name in C.CONVENTIONS)


def test_the_page_is_in_the_reference_part_next_to_the_methods():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    reference = next(p for p in toc["parts"] if p["caption"] == "Reference")
    files = [c["file"] for c in reference["chapters"]]
    assert files.index("book/conventions") == files.index("book/methods") + 1


def test_the_counts_table_reads_the_registry():
    """The page's counts are each convention's count rule; the examples avoid d*n = x.5, where roundings part."""
    assert all(abs(d * n - math.floor(d * n) - 0.5) > 1e-9 for n, d in C.EXAMPLES)
    row = C.counts_table().splitlines()[2].split(" | ")
    assert row[:3] == ["| 10", "0.26", "2.6"] and row[3:] == ["3", "3", "1", "2", "2 |"]


def test_python_m_prints_the_tables_and_updates_a_page(capsys, tmp_path):
    assert C.main([]) == 0
    assert C.book_block() in capsys.readouterr().out
    page = tmp_path / "page.md"
    page.write_text(f"before\n{C.BEGIN}\nstale\n{C.END}\nafter\n")
    assert C.main(["--update", str(page)]) == 0
    assert page.read_text() == f"before\n{C.book_block()}\nafter\n"
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match=r"page\.md has no generated part"):
        C.main(["--update", str(page)])
