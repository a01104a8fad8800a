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
