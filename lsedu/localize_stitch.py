"""Localize-and-Stitch: find the few weights that carry a skill, then stitch them.

He et al. 2025 (TMLR), "Localize-and-Stitch: Efficient Model Merging via
Sparse Task Arithmetic" (arXiv 2408.13656), Sec. 3. Explained in notebook 05.

This follows the paper's equations, not the public reference code, whose mask
training differs (notebook 05 lists how; the book's page *Sources and licences*,
``book/sources.md``, gives the file and lines of each difference):

* the L1 term's gradient is the true gradient of ``lam * sum sigmoid(S)``,
  which always pushes logits *down* (towards a sparser mask);
* gradients are averaged over the batches of a step, never summed, so the
  step size does not grow with the amount of data;
* logits start at ``+b`` on the dataless top-k and ``-b`` elsewhere, at the
  paper's density (about 1%), and only ``S`` is trained: theta_pre and tau
  stay fixed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch.func import functional_call
from tqdm.auto import tqdm

from ._checks import (
    Mask,
    StateDict,
    check_base_and_vectors,
    check_mask,
    check_same_layout,
    check_state_dict,
    check_task_vector,
    compute_dtype,
)
from .config import check_arg, choice, integer, number, optional
from .task_vectors import apply_vector
from .topk import count_for_density, global_topk_mask, topk_mask


def localize_dataless(task_vector: Mapping[str, torch.Tensor], density: float = 0.01) -> Mask:
    """Dataless localization: ``gamma = 1`` on the top-k of ``|tau|`` over all its tensors at once.

    ``k = floor(density * n + 1/2)`` exactly, rounding half up, at least one
    (:func:`lsedu.topk.count_for_density`); ties at the threshold are broken
    by tensor order, then position. Returns bool masks shaped like ``tau``.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    check_task_vector(task_vector, "task_vector")
    return global_topk_mask(task_vector, density, arg="task_vector")


def localize_random(task_vector: Mapping[str, torch.Tensor], density: float = 0.01, seed: int = 0) -> Mask:
    """A control, not a method: ``k`` entries of the task vector chosen uniformly at random, none by size.

    ``k`` is :func:`localize_dataless`'s count for ``density``, so the two
    masks have exactly the same size; ``seed`` fixes the draw. Whatever a
    trained or dataless mask does better than this one is what its choice of
    entries is worth: a mask of the same size with no information in it.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    check_task_vector(task_vector, "task_vector")
    density = check_arg(density, "density", _DENSITY)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    sizes = [t.numel() for t in task_vector.values()]
    n = sum(sizes)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count_for_density(n, density)]
    flat = torch.zeros(n, dtype=torch.bool)
    flat[chosen] = True
    return {name: part.reshape(t.shape) for (name, t), part in zip(task_vector.items(), flat.split(sizes))}


def _check_model_inputs(model, base, task_vector, loss_fn, loader) -> None:
    """What :func:`localize_trained` trains on: a module whose names cover ``base``, a task vector over its
    parameters (not its buffers), a loss function and an iterable of batches; errors name the argument."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_state_dict(base, "base")
    check_task_vector(task_vector, "task_vector")
    check_same_layout(base, task_vector, "base", "task_vector", subset=True)
    known = set(model.state_dict().keys())
    unknown = [n for n in base if n not in known]
    if unknown:
        raise ValueError(
            f"base has tensor(s) that the model does not: {unknown[:5]} (the model's names look like "
            f"{sorted(known)[:3]}); a prefix such as 'module.' or 'model.' may need stripping"
        )
    buffers = {n for n, _ in model.named_buffers()} - {n for n, _ in model.named_parameters()}
    masked_buffers = sorted(n for n in task_vector if n in buffers)
    if masked_buffers:
        raise ValueError(
            f"task_vector has buffer(s), not parameters, of the model: {masked_buffers[:5]} (e.g. batch-norm running "
            f"statistics); a mask is trained only over parameters: leave them out of the task vector"
        )
    if loader is None or isinstance(loader, (str, bytes)) or not hasattr(loader, "__iter__"):
        raise TypeError(f"loader must be an iterable of batches (a DataLoader or a list), got {type(loader).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (forward, batch) -> loss, got {type(loss_fn).__name__}")


#: The checks of :func:`localize_trained`'s hyperparameters (:mod:`lsedu.config`).
_DENSITY = number(0, 1, low_open=True, type_error=True)
_POSITIVE = number(0, low_open=True, type_error=True)
_NON_NEGATIVE = number(0, type_error=True)
_EPOCHS = integer(low=1)
_BATCHES_PER_STEP = optional(integer(low=1))
_OPTIMIZER = choice("sgd", "adam")
_CHOOSE = choice("best", "last")


def localize_trained(
    model: torch.nn.Module,
    base: Mapping[str, torch.Tensor],
    task_vector: Mapping[str, torch.Tensor],
    loss_fn: Callable[[Callable[..., Any], Any], torch.Tensor],
    loader: Iterable,
    *,
    density: float = 0.01,
    sigmoid_bias: float = 3.0,
    l1: float = 1e-5,
    lr: float = 0.1,
    epochs: int = 10,
    batches_per_step: int | None = 1,
    optimizer: Literal["sgd", "adam"] = "adam",
    target_density: float | None = None,
    validate: Callable[[Mask], float] | None = None,
    choose: Literal["best", "last"] = "best",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[Mask, list[dict]]:
    """Trained localization (He et al. 2025, Sec. 3.1):

        min_S  loss(theta_pre + sigmoid(S) * tau) + l1 * ||sigmoid(S)||_1,   gamma = round(sigmoid(S)).

    ``model`` supplies the architecture only: every forward runs
    ``torch.func.functional_call(model, base + sigmoid(S) * tau, ...)``, so
    the model's own weights are neither read for the masked tensors nor
    changed. ``loss_fn(forward, batch)`` computes the task loss of one batch,
    where ``forward(*args, **kwargs)`` runs the masked model, e.g.
    ``lambda forward, b: F.cross_entropy(forward(b[0]), b[1])``.

    * ``S`` starts at ``+sigmoid_bias`` on the dataless top-``density`` of
      ``|tau|`` and ``-sigmoid_bias`` elsewhere.
    * Each optimiser step averages the gradients of ``batches_per_step``
      batches (``None``: one step per pass over ``loader``, i.e. full batch).
    * ``l1`` weighs ``sum sigmoid(S)``; its gradient per entry does not depend
      on the model's size. An entry stays in the mask when its task gradient,
      of the order of ``|tau| * dloss/dtheta``, outweighs ``l1 * sigmoid'(S)``,
      so ``l1`` has to be set per model (the notebooks calibrate it).
    * ``optimizer="adam"`` (the default) moves every logit at about ``lr`` per
      step whatever its gradient's scale; ``"sgd"`` is plain gradient descent,
      which needs a very large ``lr`` because those gradients are tiny.
    * ``target_density``: instead of rounding, keep exactly the top
      ``target_density`` fraction of logits.
    * ``validate(mask) -> score``: called with the epoch's mask after every
      epoch (higher is better, e.g. accuracy on held-out data), and logged.
      With ``choose="best"`` the mask returned is the epoch's with the best
      score, the earliest on a tie (early stopping: train on the training
      split, choose on validation); with ``choose="last"``, or without
      ``validate``, it is the last epoch's.

    The model is evaluated in ``eval()`` mode (no dropout, no batch-norm
    updates) and restored to its mode afterwards. Returns ``(mask, log)``:
    bool masks on the CPU shaped like ``tau``, and one dict per epoch with the
    mean task loss, the mean of sigmoid(S) and the density of the rounded mask.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    _check_model_inputs(model, base, task_vector, loss_fn, loader)
    tv = task_vector
    density = check_arg(density, "density", _DENSITY)
    target_density = check_arg(target_density, "target_density", optional(_DENSITY))
    b = check_arg(sigmoid_bias, "sigmoid_bias", _POSITIVE)
    l1 = check_arg(l1, "l1", _NON_NEGATIVE)
    lr = check_arg(lr, "lr", _POSITIVE)
    check_arg(epochs, "epochs", _EPOCHS)
    check_arg(batches_per_step, "batches_per_step", _BATCHES_PER_STEP)
    check_arg(optimizer, "optimizer", _OPTIMIZER)
    if validate is not None and not callable(validate):
        raise TypeError(f"validate must be a callable mask -> score, or None, got {type(validate).__name__}")
    check_arg(choose, "choose", _CHOOSE)

    device = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    theta = {n: t.detach().to(device) for n, t in base.items()}
    tau = {n: t.detach().to(device, compute_dtype(t.dtype)) for n, t in tv.items()}
    init = localize_dataless(tv, density)
    S = {n: torch.where(init[n], b, -b).to(device, torch.float32).requires_grad_() for n in tau}
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(list(S.values()), lr=lr)
    n_entries = sum(t.numel() for t in tau.values())

    def masked_forward(*args, **kwargs):
        params = dict(theta)
        for n in tau:
            params[n] = (theta[n].to(tau[n].dtype) + torch.sigmoid(S[n]) * tau[n]).to(theta[n].dtype)
        return functional_call(model, params, args, kwargs, tie_weights=False)

    steps = 0

    def step(n_batches: int) -> None:
        nonlocal steps
        for s in S.values():  # average, not sum, the gradients of the batches in this step
            s.grad /= n_batches
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps += 1

    def current_mask() -> Mask:
        logits = {n: s.detach().cpu() for n, s in S.items()}
        if target_density is None:  # round(sigmoid(S)) = 1 exactly where S > 0
            return {n: s > 0 for n, s in logits.items()}
        return topk_mask(logits, count_for_density(n_entries, target_density), by_abs=False)

    was_training = model.training
    model.eval()
    log: list[dict] = []
    best: tuple[float, int, Mask] | None = None
    try:
        for epoch in tqdm(range(epochs), desc="localize (trained)", disable=not progress):
            losses = _one_pass(masked_forward, S, step, loss_fn, loader, l1, batches_per_step, epoch)
            with torch.no_grad():
                mean_sigmoid = float(sum(torch.sigmoid(s).sum() for s in S.values())) / n_entries
                rounded = sum(int((s > 0).sum()) for s in S.values()) / n_entries
            entry = {"epoch": epoch, "steps": steps, "task_loss": sum(losses) / len(losses),
                     "mean_sigmoid": mean_sigmoid, "density": rounded}
            if validate is not None:
                mask = current_mask()
                score = _score(validate, mask, epoch)
                entry["val"] = score
                if best is None or score > best[0] or choose == "last":
                    best = (score, epoch, mask)
            log.append(entry)
    finally:
        model.train(was_training)

    if best is None:
        return current_mask(), log
    for entry in log:
        entry["chosen"] = entry["epoch"] == best[1]
    return best[2], log


def _score(validate, mask: Mask, epoch: int) -> float:
    """``validate(mask)`` as a float; a clear error naming ``validate`` when it returns no finite number."""
    score = validate(mask)
    if isinstance(score, torch.Tensor) and score.numel() == 1:
        score = score.item()
    if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
        raise ValueError(f"validate must return a finite number, got {score!r} after epoch {epoch}")
    return float(score)


def _one_pass(forward, S, step, loss_fn, loader, l1: float, batches_per_step: int | None, epoch: int) -> list[float]:
    """One pass over ``loader`` of :func:`localize_trained`: backpropagate ``loss + l1 * sum sigmoid(S)`` per
    batch, ``step`` after every ``batches_per_step`` batches (and after the last); the task loss of each batch."""
    losses, pending = [], 0
    for batch in loader:
        task_loss = loss_fn(forward, batch)
        if not isinstance(task_loss, torch.Tensor) or task_loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        if not torch.isfinite(task_loss.detach()):
            raise ValueError(f"loss_fn returned a non-finite loss ({task_loss.detach().item()}) in epoch {epoch}")
        sparsity = sum(torch.sigmoid(s).sum() for s in S.values())
        (task_loss + l1 * sparsity).backward()
        losses.append(float(task_loss.detach()))
        pending += 1
        if batches_per_step is not None and pending == batches_per_step:
            step(pending)
            pending = 0
    if not losses:
        raise ValueError("loader yielded no batch")
    if pending:
        step(pending)
    return losses


def stitch(
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[Mapping[str, torch.Tensor]],
    masks: Sequence[Mapping[str, torch.Tensor]],
) -> StateDict:
    """Stitching (He et al. 2025, Sec. 3.2): ``theta = theta_pre + sum_i gamma'_i * tau_i``,

    with ``gamma'_i = gamma_i / sum_j gamma_j`` wherever ``sum_j gamma_j > 0``:
    where masks overlap, the task vectors are averaged; elsewhere each one is
    taken whole. There is no scaling coefficient. The order of tasks does not
    matter. Returns a new state dict.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    tvs = check_base_and_vectors(base, task_vectors)
    if not isinstance(masks, Sequence) or len(masks) != len(tvs):
        n = len(masks) if isinstance(masks, Sequence) else type(masks).__name__
        raise ValueError(f"masks must be a list with one mask per task vector ({len(tvs)}), got {n}")
    for i, m in enumerate(masks):
        check_mask(m, tvs[i], f"masks[{i}]", f"task_vectors[{i}]")
    return apply_vector(base, _stitched_vector(tvs, masks), 1.0)


def stitch_dataless(base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                    density: float = 0.01) -> StateDict:
    """Localize-and-Stitch with dataless masks, in one call: ``stitch(base, tvs, [localize_dataless(tv, density)])``.

    He et al. 2025, Sec. 3: each task keeps the top-``density`` of ``|tau|``
    over all its tensors (:func:`localize_dataless`), and the kept entries
    are stitched onto the base, averaged where masks overlap (:func:`stitch`).
    The method needs no data. Returns a new state dict.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    tvs = check_base_and_vectors(base, task_vectors)
    return stitch(base, tvs, [localize_dataless(tv, density) for tv in tvs])


def _stitched_vector(tvs, masks) -> dict[str, torch.Tensor]:
    """``sum_i gamma'_i * tau_i`` with overlaps averaged; inputs already checked."""
    merged = {}
    for n in tvs[0]:
        total = sum(torch.where(m[n], tv[n].to(compute_dtype(tv[n].dtype)), 0.0) for tv, m in zip(tvs, masks))
        coverage = sum(m[n].float() for m in masks)
        merged[n] = total / coverage.clamp(min=1)
    return merged
