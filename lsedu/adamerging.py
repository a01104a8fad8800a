"""AdaMerging: task arithmetic whose coefficients are learned, per task and per layer, from unlabeled inputs.

Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning"
(ICLR 2024, arXiv 2310.02575). Task arithmetic gives every task vector and
every layer one lambda. AdaMerging gives task ``t`` and tensor ``l`` their own
``lambda_{t,l}`` in ``theta_l = theta_pre,l + sum_t lambda_{t,l} tau_{t,l}`` and
chooses them without labels: a merged model that is unsure of its predictions
on a task's inputs (high Shannon entropy) is usually wrong on them, so the
coefficients follow the gradient of the predictions' mean entropy on unlabeled
test inputs. Task-wise AdaMerging has one lambda per task; layer-wise, one per
task and tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ._checks import StateDict, check_base_and_vectors, check_scalar


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy ``-sum_c p_c log p_c`` of the softmax of ``logits`` ``[..., classes]``, the objective.

    Not called in a notebook: :func:`adamerging` minimises it; see book/methods.md.
    """
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1).mean()


@dataclass(frozen=True)
class AdaMerging:
    """What :func:`adamerging` returns: the merged state dict, the learned coefficients and the entropy per step.

    ``coefficients[t][name]`` is ``lambda_{t,l}`` (the same value under every
    name when task-wise).

    Not called in a notebook: :func:`adamerging` returns it; see book/methods.md.
    """

    state_dict: StateDict
    coefficients: list[dict[str, float]]
    entropy: list[float]


def adamerging(base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
               entropy: Callable[[Mapping[str, torch.Tensor], object], torch.Tensor], batches: Iterable, *,
               layer_wise: bool = True, init: float = 0.3, lr: float = 1e-3, progress: bool = False) -> AdaMerging:
    """AdaMerging, ``theta_l = theta_pre,l + sum_t lambda_{t,l} tau_{t,l}``, lambda minimising the predictions' entropy.

    ``entropy(params, batch)`` runs the model with the merged ``params`` (a
    dict of tensors that carry the coefficients' gradient, e.g. through
    ``torch.func.functional_call``) on one batch of *unlabeled* inputs and
    returns their mean prediction entropy (:func:`prediction_entropy`; for
    several tasks, the sum over the tasks' batches). One Adam step (``lr``,
    the paper's 1e-3) per batch of ``batches``; every lambda starts at
    ``init`` (the paper's 0.3) and is clipped to [0, 1] after each step, as
    the authors' code does. ``layer_wise=False`` learns one lambda per task.
    The inputs are never modified. Returns an :class:`AdaMerging`.

    Not called in a notebook: a row of the registry (book/methods.md), not yet a row of the case studies.
    """
    tvs = check_base_and_vectors(base, task_vectors)
    init, lr = check_scalar(init, "init"), check_scalar(lr, "lr")
    if not 0 <= init <= 1:
        raise ValueError(f"init must be in [0, 1], got {init}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not callable(entropy):
        raise TypeError(f"entropy must be a callable (params, batch) -> scalar, got {type(entropy).__name__}")
    names = list(tvs[0])
    width = len(names) if layer_wise else 1
    raw = torch.full((len(tvs), width), init, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=lr)
    frozen = {n: t.detach() for n, t in base.items()}

    def merged(lams: torch.Tensor) -> dict[str, torch.Tensor]:
        params = dict(frozen)
        for j, n in enumerate(names):
            col = j if layer_wise else 0
            params[n] = frozen[n] + sum(lams[t, col] * tv[n].detach().to(frozen[n].dtype) for t, tv in enumerate(tvs))
        return params

    history = []
    for batch in tqdm(batches, desc="AdaMerging", disable=not progress, leave=False):
        loss = entropy(merged(raw), batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ValueError("entropy must return a scalar tensor computed from the params it is given "
                             f"(so that the coefficients get its gradient), got {loss!r:.60}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            raw.clamp_(0.0, 1.0)
        history.append(float(loss.detach()))
    if not history:
        raise ValueError("batches is empty: AdaMerging takes one step per batch of unlabeled inputs")
    lams = raw.detach()
    with torch.no_grad():
        out = {n: t.clone() for n, t in merged(lams).items()}
    coefficients = [{n: float(lams[t, j if layer_wise else 0]) for j, n in enumerate(names)} for t in range(len(tvs))]
    return AdaMerging(out, coefficients, history)
