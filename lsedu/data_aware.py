"""Data-aware merges: Fisher merging and RegMean weigh each fine-tune by statistics of its own data.

The merges of notebooks 02 to 05 look at the weights alone. The two
baselines that Localize-and-Stitch (He et al. 2025, Tables 1 and 2) compares
itself with on RoBERTa look at data too, and that is the price the paper
weighs them by:

* **Fisher merging** (Matena & Raffel 2022, "Merging Models with Fisher-Weighted
  Averaging", arXiv 2111.09832): each entry is an average of the fine-tunes'
  values, weighted by how sure each fine-tune is about it, its diagonal
  Fisher information on its task's examples (:func:`diagonal_fisher`);
* **RegMean** (Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of
  Language Models", arXiv 2212.09849): each linear layer is the one whose
  outputs are closest, in least squares, to every fine-tune's own layer on
  that fine-tune's inputs, a closed form in the Gram matrices of those inputs
  (:func:`gram_matrices`); every other tensor is averaged.

Both need examples: Fisher merging labeled ones (the gradient of the label's
log-likelihood), RegMean unlabeled inputs. Neither needs the pretrained
model. The functions that merge take the statistics as plain state dicts,
so they are tested against loops written from the papers' equations; the
functions that collect the statistics take a model and batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ._checks import StateDict, check_nonempty_list, check_same_layout, check_state_dict, check_scalar
from .soups import _check_models, _mean


def _check_weights(weights, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    weights = check_nonempty_list(weights, "weights", "numbers")
    if len(weights) != n:
        raise ValueError(f"weights has {len(weights)} value(s) for {n} fine-tunes")
    weights = [check_scalar(w, f"weights[{i}]") for i, w in enumerate(weights)]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    return weights


def fisher_merge(finetuned: Sequence[Mapping[str, torch.Tensor]], fishers: Sequence[Mapping[str, torch.Tensor]],
                 weights: Sequence[float] | None = None, smooth: float = 1e-10) -> StateDict:
    """Fisher merging, ``theta = sum_i w_i F_i theta_i / sum_i w_i F_i`` per entry (Matena & Raffel 2022, Eq. 3).

    ``fishers[i]`` is fine-tune ``i``'s diagonal Fisher (:func:`diagonal_fisher`),
    non-negative, over any subset of the tensors; ``weights`` are the
    paper's lambda_i (default: all 1). ``smooth`` is added to every Fisher
    entry, as the authors' code does (``fisher_smooth``, 1e-10), so an entry
    that no fine-tune's data reaches gets the weighted average of the
    fine-tunes instead of 0/0. Tensors without a Fisher (a head, a buffer)
    get the weighted average. Computes in float64; returns a new state dict
    in the fine-tunes' dtypes.

    Not called in a notebook: a row of the registry (book/methods.md), not yet a row of the case studies.
    """
    finetuned = _check_models(finetuned, "finetuned")
    fishers = check_nonempty_list(fishers, "fishers", "Fisher state dicts")
    if len(fishers) != len(finetuned):
        raise ValueError(f"fishers has {len(fishers)} state dict(s) for {len(finetuned)} fine-tunes")
    for i, f in enumerate(fishers):
        check_state_dict(f, f"fishers[{i}]")
        check_same_layout(finetuned[0], f, "finetuned[0]", f"fishers[{i}]", subset=True)
        if f.keys() != fishers[0].keys():
            raise ValueError(f"fishers[{i}] covers other tensors than fishers[0]: give every fine-tune's Fisher "
                             f"over the same tensors")
        for name, t in f.items():
            if (t < 0).any():
                raise ValueError(f"fishers[{i}][{name!r}] has negative entries; a diagonal Fisher is >= 0")
    w = _check_weights(weights, len(finetuned))
    smooth = check_scalar(smooth, "smooth")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    out = {}
    for name, first in finetuned[0].items():
        if name in fishers[0] and first.is_floating_point():
            num = sum(wi * (f[name].double() + smooth) * m[name].double() for wi, f, m in zip(w, fishers, finetuned))
            den = sum(wi * (f[name].double() + smooth) for wi, f in zip(w, fishers))
            if smooth == 0 and not bool((den > 0).all()):
                raise ValueError(f"tensor {name!r}: every fine-tune's Fisher is 0 at some entry; use smooth > 0")
            out[name] = (num / den).to(first.dtype)
        elif first.is_floating_point():
            out[name] = (sum(wi * m[name].double() for wi, m in zip(w, finetuned)) / sum(w)).to(first.dtype)
        else:
            out[name] = first.clone()  # integer buffers cannot be averaged: the first fine-tune's
    return out


def regmean_merge(finetuned: Sequence[Mapping[str, torch.Tensor]], grams: Sequence[Mapping[str, torch.Tensor]],
                  alpha: float = 1.0) -> StateDict:
    """RegMean, ``W = (sum_i W_i G~_i)(sum_i G~_i)^-1`` per linear layer (Jin et al. 2023, Eq. 2 and Sec. 3.2).

    ``grams[i][name]`` is ``X_i^T X_i / n_i`` for the weight ``name`` (torch's
    ``[out, in]`` layout, ``y = x W^T``), where ``X_i`` are the ``n_i`` inputs
    fine-tune ``i``'s layer saw on its own data (:func:`gram_matrices`). In the
    paper's ``[in, out]`` layout this is ``W = (sum_i G_i)^-1 sum_i G_i W_i``,
    the minimiser of ``sum_i ||X_i W - X_i W_i||^2``. ``G~ = alpha G + (1 - alpha)
    diag(G)`` scales the off-diagonal entries (the paper's alpha; 1, no
    scaling, is the authors' code's default, ``regmean_reduce_nondiag: -1``),
    which keeps the sum well conditioned when the inputs are few. Every
    tensor without a Gram (biases, norms, embeddings) is averaged, as the
    paper does. Computes in float64; returns a new state dict.

    Not called in a notebook: a row of the registry (book/methods.md), not yet a row of the case studies.
    """
    finetuned = _check_models(finetuned, "finetuned")
    grams = check_nonempty_list(grams, "grams", "Gram state dicts")
    if len(grams) != len(finetuned):
        raise ValueError(f"grams has {len(grams)} state dict(s) for {len(finetuned)} fine-tunes")
    alpha = check_scalar(alpha, "alpha")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for i, g in enumerate(grams):
        check_state_dict(g, f"grams[{i}]")
        if g.keys() != grams[0].keys():
            raise ValueError(f"grams[{i}] covers other layers than grams[0]: give every fine-tune's Grams "
                             f"for the same layers")
        for name, G in g.items():
            if name not in finetuned[0]:
                raise ValueError(f"grams[{i}] has a Gram for {name!r}, which finetuned[0] lacks")
            W = finetuned[0][name]
            if W.dim() != 2 or G.shape != (W.shape[1], W.shape[1]):
                raise ValueError(f"grams[{i}][{name!r}] has shape {tuple(G.shape)}; the linear weight "
                                 f"{tuple(W.shape)} needs its inputs' Gram, ({W.shape[-1]}, {W.shape[-1]})")
    out = _mean(finetuned)
    for name in grams[0]:
        tilde = [alpha * g[name].double() + (1 - alpha) * torch.diag(torch.diagonal(g[name].double()))
                 for g in grams]
        total = sum(tilde)
        rhs = sum(m[name].double() @ G for m, G in zip(finetuned, tilde))  # sum_i W_i G~_i, [out, in]
        try:
            merged = torch.linalg.solve(total, rhs, left=False)  # X total = rhs (total is symmetric)
        except torch._C._LinAlgError as e:
            raise ValueError(f"layer {name!r}: the summed Gram matrix is singular (too few inputs for its "
                             f"{total.shape[0]} features); use alpha < 1") from e
        out[name] = merged.to(finetuned[0][name].dtype)
    return out


def gram_matrices(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], object],
                  names: Sequence[str] | None = None) -> StateDict:
    """``{weight name: X^T X / n}``: the Gram matrix of the inputs each ``nn.Linear`` of ``model`` sees, for RegMean.

    ``forward(model, batch)`` runs one batch (its result is ignored); a
    hook on each linear layer adds ``x^T x`` over every input row (every
    token, for a sequence model) and counts the rows. ``names`` selects the
    weights (state-dict names ending in ``.weight``; default: every
    ``nn.Linear``). Dividing by the row count makes fine-tunes with more or
    fewer examples count alike, as the authors' ``regmean_mean`` does. Runs
    without gradients; the model is not modified.

    Not called in a notebook: it collects what :func:`regmean_merge` needs; see book/methods.md.
    """
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if names is None:
        names = list(linears)
    unknown = [n for n in names if n not in linears]
    if unknown:
        raise ValueError(f"names {unknown[:3]} are not weights of nn.Linear layers of the model "
                         f"(it has {len(linears)}, e.g. {list(linears)[:2]})")
    sums = {n: torch.zeros(linears[n].in_features, linears[n].in_features, dtype=torch.float64) for n in names}
    rows = dict.fromkeys(names, 0)

    def hook(name):
        def add(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double().cpu()
            sums[name] += x.T @ x
            rows[name] += x.shape[0]
        return add

    handles = [linears[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    empty = [n for n in names if rows[n] == 0]
    if empty:
        raise ValueError(f"layer(s) {empty[:3]} saw no input: batches was empty or forward skipped them")
    return {n: (sums[n] / rows[n]).float() for n in names}


def diagonal_fisher(log_likelihood: Callable[[object], torch.Tensor], params: Mapping[str, torch.Tensor],
                    examples: Iterable) -> StateDict:
    """``{name: mean over examples of (d log p(y | x) / d theta)^2}``: the empirical diagonal Fisher, for Fisher merging.

    ``log_likelihood(example)`` returns the scalar log-likelihood of one
    labeled example's label under the model whose parameters are ``params``
    (tensors with ``requires_grad``, e.g. a model's ``named_parameters()``);
    each example's gradient is squared, and the squares are averaged over
    the examples (Matena & Raffel 2022, Sec. 2.2, with the true label: the
    empirical Fisher). One backward pass per example: the squares of a
    batch's summed gradient would be a different quantity. Parameters the
    likelihood does not reach get 0.

    Not called in a notebook: it collects what :func:`fisher_merge` needs; see book/methods.md.
    """
    if not isinstance(params, Mapping) or not params:
        raise TypeError("params must be a non-empty mapping of name -> tensor with requires_grad")
    frozen = [n for n, p in params.items() if not (isinstance(p, torch.Tensor) and p.requires_grad)]
    if frozen:
        raise ValueError(f"params {frozen[:3]} do not require gradients; pass only the parameters to weigh")
    names = list(params)
    total = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    count = 0
    for example in examples:
        ll = log_likelihood(example)
        if not isinstance(ll, torch.Tensor) or ll.numel() != 1:
            raise ValueError(f"log_likelihood must return a scalar tensor per example, got {ll!r:.60}")
        grads = torch.autograd.grad(ll.reshape(()), [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                total[n] += g.detach().double() ** 2
        count += 1
    if count == 0:
        raise ValueError("examples is empty: the Fisher is a mean over at least one example")
    return {n: (total[n] / count).to(params[n].dtype) for n in names}
