"""DARE: drop and rescale a task vector before merging.

Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from
Homologous Models as a Free Lunch" (arXiv 2311.03099), Sec. 3.
Explained in notebook 04 (interference, TIES and DARE).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from ._checks import (
    StateDict,
    check_base_and_vectors,
    check_fraction,
    check_no_overflow,
    check_task_vector,
    compute_dtype,
)
from .arithmetic import task_arithmetic
from .task_vectors import TaskVector
from .ties import ties_merge


BLOCK = 1 << 20


def uniform_stream(seed: int, name: str, numel: int, start: int = 0, end: int | None = None) -> torch.Tensor:
    """Uniform [0, 1) draws for the flat entries ``start:end`` of the tensor ``name`` (``numel`` entries).

    The draws come in blocks of 2**20 entries, block ``b`` from its own
    generator seeded by ``(seed, name, b)``. So a tensor's drop pattern does not
    depend on the other tensors, on the order they are visited in, or on how a
    streaming merge cuts the tensor into chunks: any slice can be drawn alone
    and equals the same slice of the whole.

    Not called in a notebook: the building block of ``dare``, explained in notebook 04
    (04_interference_ties_dare.ipynb), and of the DARE of ``lsedu merge`` (appendix_streaming_merge.ipynb).
    """
    end = numel if end is None else end
    parts = []
    for b in range(start // BLOCK, (end - 1) // BLOCK + 1 if end > start else start // BLOCK):
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}:{b}".encode()))
        block = torch.rand(min(BLOCK, numel - b * BLOCK), generator=g)
        lo, hi = max(start - b * BLOCK, 0), min(end - b * BLOCK, len(block))
        parts.append(block[lo:hi])
    return torch.cat(parts) if parts else torch.empty(0)


def drop_and_rescale(t: torch.Tensor, p: float, seed: int, name: str, numel: int | None = None,
                     start: int = 0) -> torch.Tensor:
    """DARE on the flat entries ``start:start + t.numel()`` of tensor ``name`` (of ``numel`` entries in all).

    The rescaling is computed in ``t``'s dtype (float16 and bfloat16 in float32) and cast back.

    Not called in a notebook: the building block of ``dare``, explained in notebook 04
    (04_interference_ties_dare.ipynb), and of the DARE of ``lsedu merge`` (appendix_streaming_merge.ipynb).
    """
    numel = t.numel() if numel is None else numel
    keep = uniform_stream(seed, name, numel, start, start + t.numel()).reshape(t.shape) >= p
    return torch.where(keep, t.to(compute_dtype(t.dtype)) / (1 - p), 0.0).to(t.dtype)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


def dare(task_vector: Mapping[str, torch.Tensor], p: float, seed: int = 0) -> TaskVector:
    """Drop And REscale: ``tau_hat = (1 - m) * tau / (1 - p)``, ``m ~ Bernoulli(p)`` entry-wise.

    ``p`` in [0, 1) is the drop probability (``p=0`` returns ``tau``
    unchanged). The rescaling keeps the expected value of every entry equal
    to ``tau``. Deterministic for a given ``seed``.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    check_task_vector(task_vector, "task_vector")
    p = check_fraction(p, "p", low_open=False, high_open=True)
    _check_seed(seed)
    return TaskVector({n: check_no_overflow(n, drop_and_rescale(t, p, seed, n), f"the rescaled task vector "
                                            f"(tau / (1 - p), p={p:g}) overflows", "use a smaller p, or convert the "
                                            "models to a wider dtype first") for n, t in task_vector.items()})


def dare_merge(
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[Mapping[str, torch.Tensor]],
    p: float = 0.9,
    lam: float = 1.0,
    seed: int = 0,
    then: Literal["task_arithmetic", "ties"] = "task_arithmetic",
    **ties_kwargs,
) -> StateDict:
    """DARE each task vector (``tau_i`` with seed ``seed + i``), then merge with task arithmetic or TIES.

    ``then="ties"`` passes ``ties_kwargs`` (``density``, ``trim_scope``) to
    :func:`lsedu.ties.ties_merge`. Returns a new state dict.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    tvs = check_base_and_vectors(base, task_vectors)
    _check_seed(seed)
    if then not in ("task_arithmetic", "ties"):
        raise ValueError(f"then must be 'task_arithmetic' or 'ties', got {then!r}")
    dropped = [dare(tv, p, seed + i) for i, tv in enumerate(tvs)]
    if then == "task_arithmetic":
        if ties_kwargs:
            raise TypeError(f"unexpected arguments for then='task_arithmetic': {sorted(ties_kwargs)}")
        return task_arithmetic(base, dropped, lam)
    return ties_merge(base, dropped, lam=lam, **ties_kwargs)

