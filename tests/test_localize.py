"""Trained localization finds a planted sparse skill, and follows the paper, not the reference code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import lsedu
from lsedu import TaskVector


def planted_skill(seed: int):
    """A tiny MLP whose fine-tune is a sparse skill hidden behind large, useless weights.

    * the skill: 12 large entries (1% of the 1,188 parameters) of the head;
    * a distractor: larger changes on the weights of 16 inputs that are always
      zero in the task's data, so they change nothing the task can see;
    * a little dense noise everywhere.

    Labels are the fine-tuned model's predictions. The dataless top-k of
    |tau| picks the distractor, so only a localization that looks at the data
    can find the skill.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tau = {k: 0.001 * torch.randn(v.shape, generator=g) for k, v in pre.items()}
    skill = torch.randperm(128, generator=g)[:12]
    tau["2.weight"].view(-1)[skill] += 3 * torch.sign(torch.randn(12, generator=g))
    tau["0.weight"][:, 16:] += 4 * torch.sign(torch.randn(32, 16, generator=g))
    ft = {k: pre[k] + tau[k] for k in pre}
    x = torch.zeros(2048, 32)
    x[:, :16] = torch.randn(2048, 16, generator=g)
    with torch.no_grad():
        y = functional_call(model, ft, (x,)).argmax(1)
    return model, pre, ft, (x[:1024], y[:1024]), (x[1024:], y[1024:])


def accuracy(model, sd, data):
    x, y = data
    with torch.no_grad():
        return (functional_call(model, sd, (x,)).argmax(1) == y).float().mean().item()


def cross_entropy(forward, batch):
    return F.cross_entropy(forward(batch[0]), batch[1])


@pytest.mark.parametrize("seed", [0, 4, 5])
def test_trained_mask_keeps_95_percent_at_5_percent_density(seed):
    model, pre, ft, train, test = planted_skill(seed)
    tau = TaskVector.from_models(pre, ft)
    loader = [(train[0][i : i + 128], train[1][i : i + 128]) for i in range(0, 1024, 128)]
    weights_before = {k: v.clone() for k, v in model.state_dict().items()}

    mask, log = lsedu.localize_trained(model, pre, tau, cross_entropy, loader, density=0.01, l1=1e-3, lr=0.1,
                                       epochs=40, progress=False)

    ft_acc = accuracy(model, ft, test)
    trained_acc = accuracy(model, lsedu.stitch(pre, [tau], [mask]), test)
    dataless_acc = accuracy(model, lsedu.stitch(pre, [tau], [lsedu.localize_dataless(tau, 0.01)]), test)
    assert lsedu.density(mask) <= 0.05
    assert trained_acc >= 0.95 * ft_acc, (trained_acc, ft_acc)
    assert dataless_acc < 0.6 * ft_acc  # the distractor fools |tau|, so the data mattered
    assert len(log) == 40 and log[-1]["task_loss"] < log[0]["task_loss"]
    for k, v in model.state_dict().items():  # only the logits were trained
        assert torch.equal(v, weights_before[k]), k


def test_exact_target_density():
    model, pre, ft, train, _ = planted_skill(1)
    tau = TaskVector.from_models(pre, ft)
    mask, _ = lsedu.localize_trained(model, pre, tau, cross_entropy, [train], epochs=3, target_density=0.02,
                                     progress=False)
    assert sum(int(m.sum()) for m in mask.values()) == round(0.02 * tau.numel())


class Recorder(nn.Module):
    """y = x * w; lets a test read the masked weight that the forward pass sees."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return x * self.w


def test_l1_gradient_pushes_every_logit_down():
    """With no task signal, the true gradient of l1 * sum(sigmoid(S)) lowers every logit.

    The reference code's sign error pushes positive logits *up*; here the mask
    selected at start (+b) must shrink as well.
    """
    model = Recorder()
    pre = {"w": torch.zeros(4)}
    tau = TaskVector({"w": torch.tensor([4.0, 3.0, 2.0, 1.0])})
    mask, log = lsedu.localize_trained(model, pre, tau, lambda fwd, b: 0 * fwd(b).sum(), [torch.ones(4)],
                                       density=0.5, sigmoid_bias=0.5, l1=1.0, lr=0.1, optimizer="sgd", epochs=30,
                                       progress=False)
    assert log[-1]["mean_sigmoid"] < log[0]["mean_sigmoid"]
    assert not any(m.any() for m in mask.values())  # every logit went below 0


def test_gradients_are_averaged_over_batches():
    """The same data split into 1 or 8 batches per step must give the same update (not 8x larger)."""
    model = Recorder()
    pre = {"w": torch.zeros(4)}
    tau = TaskVector({"w": torch.tensor([1.0, -1.0, 0.5, 2.0])})
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    target = torch.ones(64, 4)

    def loss(fwd, xb):
        return F.mse_loss(fwd(xb), target[: len(xb)])

    kw = dict(density=0.5, l1=0.0, lr=50.0, optimizer="sgd", epochs=1, progress=False, target_density=0.5)
    one = lsedu.localize_trained(model, pre, tau, loss, [x], batches_per_step=None, **kw)
    eight = lsedu.localize_trained(model, pre, tau, loss, list(x.split(8)), batches_per_step=None, **kw)
    assert all(torch.equal(one[0][n], eight[0][n]) for n in one[0])
    assert one[1][0]["mean_sigmoid"] == pytest.approx(eight[1][0]["mean_sigmoid"], rel=1e-4)


def test_validate_chooses_the_best_epoch_and_logs_every_score():
    """With ``validate``, the mask returned is the best-scoring epoch's (the earliest on a tie), and each
    epoch's log holds its score, its step count and whether it was chosen."""
    model, pre, ft, train, test = planted_skill(0)
    tau = TaskVector.from_models(pre, ft)
    loader = [(train[0][i : i + 256], train[1][i : i + 256]) for i in range(0, 1024, 256)]
    seen = []

    def validate(mask):
        seen.append({n: m.clone() for n, m in mask.items()})
        return [0.2, 0.9, 0.5, 0.9, 0.1][len(seen) - 1]  # best at epoch 1, tied at 3

    mask, log = lsedu.localize_trained(model, pre, tau, cross_entropy, loader, density=0.01, l1=1e-3, lr=0.1,
                                       epochs=5, sigmoid_bias=1.0, validate=validate, progress=False)
    assert [e["val"] for e in log] == [0.2, 0.9, 0.5, 0.9, 0.1]
    assert [e["chosen"] for e in log] == [False, True, False, False, False]
    assert [e["steps"] for e in log] == [4, 8, 12, 16, 20]
    assert all(torch.equal(mask[n], seen[1][n]) for n in mask)
    # the mask moved after epoch 1 (logits at +-1 take a few Adam steps to change sides): the choice mattered
    assert not all(torch.equal(seen[1][n], seen[4][n]) for n in mask)
    # the rounded mask of each epoch is what validate saw
    assert [e["density"] for e in log] == [sum(int(m.sum()) for m in s.values()) / tau.numel() for s in seen]


def test_without_validate_the_last_epoch_is_returned():
    model, pre, ft, train, _ = planted_skill(0)
    tau = TaskVector.from_models(pre, ft)
    kw = dict(density=0.01, l1=1e-3, lr=0.1, epochs=4, progress=False)
    last, log = lsedu.localize_trained(model, pre, tau, cross_entropy, [train], **kw)
    rising = iter([0.1, 0.2, 0.3, 0.4])  # each epoch better than the one before: validation keeps the last
    chosen, _ = lsedu.localize_trained(model, pre, tau, cross_entropy, [train], validate=lambda m: next(rising), **kw)
    assert "val" not in log[0] and "chosen" not in log[0]
    assert all(torch.equal(last[n], chosen[n]) for n in last)


@pytest.mark.parametrize("bad, match", [(lambda m: float("nan"), "finite"), (lambda m: "0.5", "finite"),
                                         (lambda m: True, "finite"), (3, "callable")])
def test_validate_bad_inputs_are_named(bad, match):
    model, pre, ft, train, _ = planted_skill(0)
    tau = TaskVector.from_models(pre, ft)
    with pytest.raises((TypeError, ValueError), match=f"validate.*{match}|{match}.*validate"):
        lsedu.localize_trained(model, pre, tau, cross_entropy, [train], epochs=1, validate=bad, progress=False)


@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 1.0])
def test_random_mask_has_the_dataless_count_and_depends_on_its_seed(density):
    tau = TaskVector({"a": torch.randn(7, 11), "b": torch.randn(13), "c": torch.randn(2, 3, 5)})
    k = sum(int(m.sum()) for m in lsedu.localize_dataless(tau, density).values())
    masks = [lsedu.localize_random(tau, density, seed=s) for s in (0, 0, 1)]
    for m in masks:
        assert set(m) == set(tau) and all(m[n].shape == tau[n].shape and m[n].dtype == torch.bool for n in tau)
        assert sum(int(x.sum()) for x in m.values()) == k
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in tau)
    if k < tau.numel():
        assert not all(torch.equal(masks[0][n], masks[2][n]) for n in tau)


def test_random_mask_is_uniform_over_entries():
    """Every entry is chosen with probability k/n: over many seeds, each entry's frequency is close to it."""
    tau = TaskVector({"a": torch.arange(1.0, 41.0).reshape(4, 10), "b": torch.ones(10)})  # sizes must not matter
    counts = sum(torch.cat([m.flatten() for m in lsedu.localize_random(tau, 0.2, seed=s).values()]).double()
                 for s in range(2000))
    freq = counts / 2000
    assert freq.sub(0.2).abs().max() < 0.05  # binomial sd 0.009: a 5-sd band
    # the large entries of "a" are not favoured: the top half by size is chosen as often as the bottom half
    assert abs(float(freq[20:40].mean() - freq[:20].mean())) < 0.02


@pytest.mark.parametrize("kw, match", [(dict(density=0.0), "density"), (dict(density=1.5), "density"),
                                       (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed=True), "seed")])
def test_random_mask_bad_inputs_are_named(kw, match):
    tau = TaskVector({"a": torch.randn(10)})
    with pytest.raises((TypeError, ValueError), match=match):
        lsedu.localize_random(tau, **{"density": 0.1, **kw})


def test_choose_last_keeps_the_last_epoch_and_still_logs_the_scores():
    model, pre, ft, train, _ = planted_skill(0)
    tau = TaskVector.from_models(pre, ft)
    kw = dict(density=0.01, l1=1e-3, lr=0.1, epochs=4, sigmoid_bias=1.0, progress=False)
    last, _ = lsedu.localize_trained(model, pre, tau, cross_entropy, [train], **kw)
    falling = iter([0.4, 0.3, 0.2, 0.1])
    kept, log = lsedu.localize_trained(model, pre, tau, cross_entropy, [train], validate=lambda m: next(falling),
                                       choose="last", **kw)
    assert [e["val"] for e in log] == [0.4, 0.3, 0.2, 0.1] and [e["chosen"] for e in log] == [False] * 3 + [True]
    assert all(torch.equal(last[n], kept[n]) for n in last)
    with pytest.raises(ValueError, match="choose"):
        lsedu.localize_trained(model, pre, tau, cross_entropy, [train], validate=lambda m: 0.5, choose="first", **kw)
