"""Where the public reference code differs from the papers, lsedu follows the papers (notebook 05, last section).

Each test builds a small case on which the reference code's behaviour
(the book's page *Sources and licences*, ``book/sources.md``, section "Claims
about the reference implementations", names the file, function and lines of
each one) gives a different answer from the paper's equation, writes that behaviour down in a
few lines (``reference_*``, described from the bug reports, not copied), and
checks that lsedu gives the paper's answer and not the reference's. If lsedu
ever picked up one of these behaviours, the test would fail.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsedu
from lsedu import TaskVector


class Scale(nn.Module):
    """``y = x * w``: the forward pass shows which masked weight it sees."""

    def __init__(self, n: int = 4):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))

    def forward(self, x):
        return x * self.w


def no_signal(forward, batch):
    """A task loss with zero gradient: only the sparsity term moves the logits."""
    return 0 * forward(batch).sum()


# ----------------------------------------------------------------------------- Localize-and-Stitch, mask training


def reference_l1_step(S: torch.Tensor, l1: float) -> torch.Tensor:
    """The reference update with no task gradient: its 'L1' term moves a logit *away* from zero on both sides
    (up where S > 0), where the gradient of ``l1 * sum sigmoid(S)`` is ``l1 * sigmoid'(S) > 0`` everywhere."""
    d = torch.sigmoid(S) * (1 - torch.sigmoid(S))
    return S + l1 * torch.where(S > 0, d, -d)


def test_l1_term_lowers_every_logit_as_its_gradient_says():
    tau = TaskVector({"w": torch.tensor([4.0, 3.0, 2.0, 1.0])})
    b, l1, lr, epochs = 0.5, 1.0, 0.1, 30
    mask, log = lsedu.localize_trained(Scale(), {"w": torch.zeros(4)}, tau, no_signal, [torch.ones(4)],
                                       density=0.5, sigmoid_bias=b, l1=l1, lr=lr, optimizer="sgd", epochs=epochs,
                                       progress=False)
    # the paper: plain gradient descent on l1 * sum sigmoid(S)
    S = torch.tensor([b, b, -b, -b])
    for _ in range(epochs):
        S = S - lr * l1 * torch.sigmoid(S) * (1 - torch.sigmoid(S))
    assert log[-1]["mean_sigmoid"] == pytest.approx(float(torch.sigmoid(S).mean()), rel=1e-5)
    assert not mask["w"].any()  # the whole mask decayed away
    # the reference: the two selected logits grow, so they stay in the mask forever
    R = torch.tensor([b, b, -b, -b])
    for _ in range(epochs):
        R = reference_l1_step(R, lr * l1)
    assert (R > 0).tolist() == [True, True, False, False]
    assert not torch.equal(mask["w"], R > 0)


def test_gradients_are_averaged_over_the_batches_of_a_step():
    """One full-batch step over 8 batches moves the logits as far as over 1 batch of the same data."""
    tau = TaskVector({"w": torch.tensor([1.0, -1.0, 0.5, 2.0])})
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    target = torch.ones(64, 4)

    def loss(forward, xb):
        return F.mse_loss(forward(xb), target[: len(xb)])

    b, lr = 1.0, 20.0
    kw = dict(density=0.5, sigmoid_bias=b, l1=0.0, lr=lr, optimizer="sgd", epochs=1, progress=False,
              batches_per_step=None)
    _, log = lsedu.localize_trained(Scale(), {"w": torch.zeros(4)}, tau, loss, list(x.split(8)), **kw)

    S = torch.tensor([b, -b, -b, b]).requires_grad_()  # top-2 of |tau|: entries 3 and 0
    grads = []
    for xb in x.split(8):
        g, = torch.autograd.grad(loss(lambda v: v * (torch.sigmoid(S) * tau["w"]), xb), S)
        grads.append(g)
    paper = torch.sigmoid(S.detach() - lr * sum(grads) / len(grads)).mean()
    reference = torch.sigmoid(S.detach() - lr * sum(grads)).mean()  # summed: 8x the step
    assert log[0]["mean_sigmoid"] == pytest.approx(float(paper), rel=1e-5)
    assert abs(float(paper) - float(reference)) > 0.01  # the case tells them apart


def test_one_step_per_batch_by_default_not_one_full_batch_step_per_epoch():
    """With the defaults, the masked weights change between the batches of an epoch (the reference makes a
    single full-batch step per epoch, so every batch of an epoch would see the same weights)."""
    tau = TaskVector({"w": torch.tensor([1.0, -1.0, 0.5, 2.0])})
    seen = []

    def loss(forward, xb):
        y = forward(torch.ones(4))
        seen.append(y.detach().clone())
        return F.mse_loss(forward(xb), torch.ones_like(xb))

    data = list(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)).split(8))
    lsedu.localize_trained(Scale(), {"w": torch.zeros(4)}, tau, loss, data, epochs=1, progress=False)
    assert len(seen) == 4
    assert all(not torch.equal(seen[i], seen[i + 1]) for i in range(3))


def test_starts_at_the_papers_density_and_learning_rate():
    """The paper's mask starts from its dataless top-k at about 1%; the reference starts at 0.001%
    (and trains with a learning rate of 1e7)."""
    defaults = inspect.signature(lsedu.localize_trained).parameters
    assert defaults["density"].default == 0.01
    assert defaults["lr"].default < 1e3
    g = torch.Generator().manual_seed(0)
    tau = TaskVector({"w": torch.randn(20_000, generator=g)})
    mask, log = lsedu.localize_trained(Scale(20_000), {"w": torch.zeros(20_000)}, tau, no_signal,
                                       [torch.ones(20_000)], l1=0.0, epochs=1, progress=False)
    assert int(mask["w"].sum()) == 200  # 1% of 20,000; the reference's 0.001% would keep round(0.2) = 0
    assert torch.equal(mask["w"], lsedu.localize_dataless(tau, 0.01)["w"])
    assert round(1e-5 * 20_000) != 200


def test_only_the_mask_logits_are_trained():
    """theta_pre and tau are fixed (the paper); MergeBench trains through a trainer whose AdamW step with
    weight decay also moves the base weights."""
    model = Scale()
    with torch.no_grad():
        model.w.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
    before = model.w.detach().clone()
    base = {"w": torch.tensor([0.3, -0.2, 0.1, 0.5])}
    base_copy = {"w": base["w"].clone()}
    tau = TaskVector({"w": torch.tensor([1.0, -1.0, 0.5, 2.0])})
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(2))
    lsedu.localize_trained(model, base, tau, lambda f, xb: F.mse_loss(f(xb), torch.ones_like(xb)), [x],
                           epochs=5, progress=False)
    assert torch.equal(model.w.detach(), before)
    assert torch.equal(base["w"], base_copy["w"])
    # what a trainer over all parameters would do: AdamW's decoupled weight decay moves them even at zero loss
    drifting = Scale()
    with torch.no_grad():
        drifting.w.copy_(before)
    opt = torch.optim.AdamW(drifting.parameters(), lr=1e-2, weight_decay=0.1)
    (0 * drifting(x).sum()).backward()
    opt.step()
    assert not torch.equal(drifting.w.detach(), before)


def test_validation_examples_are_not_training_examples():
    """Our splits are disjoint, and trained localization sees only training examples (the reference draws its
    'validation' examples from the training split)."""
    from lsedu.zoo.base import split_fixed

    ids = torch.arange(600)
    labels = ids % 3
    train, val, test = split_fixed(ids, labels, val=0.2, test=0.2, seed=0)
    tr, va, te = (set(s.inputs.tolist()) for s in (train, val, test))
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert len(tr | va | te) == 600


def test_localization_batches_come_from_the_training_split():
    from lsedu.zoo.base import FinetuneConfig
    from lsedu.zoo.vision import VisionSetup, to_encoder_input

    setup = VisionSetup(progress=False, tasks=("digits",), split_sizes=(("digits", 4, 2, 3),),
                        finetune=FinetuneConfig(epochs=1, lr=1e-4, batch_size=8))
    seen = torch.cat([x for x, _ in setup.localization_batches("digits", batch_size=8)])
    data = setup.task("digits")
    train = to_encoder_input(data.train.inputs, setup.config)
    val = to_encoder_input(data.val.inputs, setup.config)

    def rows_in(rows, pool):
        return [bool((pool == r).flatten(1).all(1).any()) for r in rows]

    assert len(seen) == len(train) and all(rows_in(seen, train))
    assert not any(rows_in(seen, val))


# ----------------------------------------------------------------------------- Localize-and-Stitch, stitching


def reference_overlap_weights(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """MergeBench's stitching weights: by an indentation slip, the overlap count of mask i adds only its
    overlap with the *last* other mask, so gamma'_i = 1 / (1 + [i and last other both claim])."""
    out = []
    for i, m in enumerate(masks):
        last = [j for j in range(len(masks)) if j != i][-1]
        count = m.float() + (m & masks[last]).float()
        out.append(torch.where(count > 0, 1 / count.clamp(min=1), 0.0))
    return out


def test_stitching_averages_over_every_mask_that_claims_an_entry():
    # entry 0: tasks 0 and 1; entry 1: all three; entry 2: task 2 only; entry 3: none
    masks = [torch.tensor([True, True, False, False]), torch.tensor([True, True, False, False]),
             torch.tensor([False, True, True, False])]
    taus = [torch.tensor([2.0, 3.0, 5.0, 7.0]), torch.tensor([4.0, 6.0, 1.0, 1.0]), torch.tensor([8.0, 9.0, 3.0, 1.0])]
    base = {"w": torch.zeros(4)}
    merged = lsedu.stitch(base, [TaskVector({"w": t}) for t in taus], [{"w": m} for m in masks])["w"]
    paper = torch.tensor([(2 + 4) / 2, (3 + 6 + 9) / 3, 3.0, 0.0])
    assert torch.allclose(merged, paper)
    weights = reference_overlap_weights(masks)
    reference = sum(w * t for w, t in zip(weights, taus))
    assert not torch.allclose(reference, paper)  # entry 0 gets 2 + 4 = 6, entry 1 gets (3 + 6 + 9) / 2


# ----------------------------------------------------------------------------- TIES and DARE


def test_ties_trims_over_the_whole_vector_by_default():
    """The TIES paper's top-k is global; mergekit and peft trim each tensor on its own. They keep different
    entries when tensors differ in scale."""
    tv = TaskVector({"big": torch.tensor([10.0, 9.0, 8.0, 7.0]), "small": torch.tensor([0.4, 0.3, 0.2, 0.1])})
    assert inspect.signature(lsedu.ties_merge).parameters["trim_scope"].default == "global"
    kept = lsedu.trim(tv, 0.5)
    assert kept["big"].ne(0).sum() == 4 and kept["small"].ne(0).sum() == 0
    per_tensor = lsedu.trim(tv, 0.5, scope="per_tensor")
    assert per_tensor["small"].ne(0).sum() == 2


def test_ties_sign_election_by_mass_with_no_winner_on_a_tie():
    """gamma = sign(sum): mass wins over count (+5 beats -1, -1), and an exact tie elects 0, so that entry is
    not merged (the TIES reference code falls back to the sign that most entries of the vector elected)."""
    a = TaskVector({"w": torch.tensor([5.0, 1.0, 2.0])})
    b = TaskVector({"w": torch.tensor([-1.0, -1.0, 3.0])})
    c = TaskVector({"w": torch.tensor([-1.0, 0.0, 1.0])})
    signs = lsedu.elect_sign([a, b, c])
    assert signs["w"].tolist() == [1.0, 0.0, 1.0]
    merged = lsedu.disjoint_mean([a, b, c], signs)
    assert merged["w"].tolist() == [5.0, 0.0, 2.0]
    # the reference's fallback: the sign that most entries elected, sign(sum of the elected signs) = +1 here
    majority = torch.sign(torch.sign(sum(t["w"] for t in (a, b, c))).sum())
    assert majority == 1 and majority != signs["w"][1]


def test_dare_refuses_dropping_everything_instead_of_returning_nan():
    """DARE at p = 1 (density 0) rescales by 1 / 0: peft returns NaN; lsedu says what is wrong."""
    tv = TaskVector({"w": torch.ones(1000)})
    with pytest.raises(ValueError, match=r"^p must lie in \[0, 1\)"):
        lsedu.dare(tv, p=1.0)
    almost = lsedu.dare(tv, p=0.999)
    assert torch.isfinite(almost["w"]).all()
    assert math.isnan(float(torch.tensor(0.0) / torch.tensor(0.0)))  # what 0 * x / (1 - 1) gives
