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

from ._checks import StateDict, check_base_and_vectors, check_fraction, check_task_vector
from .task_arithmetic import task_arithmetic
from .task_vectors import TaskVector
from .ties import ties_merge


def _generator(seed: int, name: str) -> torch.Generator:
    # One stream per (seed, tensor name): the drop pattern of a tensor does not
    # depend on which other tensors exist or on the order they are visited in,
    # so a streaming merge draws exactly what an in-memory one draws.
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


def dare(task_vector: Mapping[str, torch.Tensor], p: float, seed: int = 0) -> TaskVector:
    """Drop And REscale: ``tau_hat = (1 - m) * tau / (1 - p)``, ``m ~ Bernoulli(p)`` entry-wise.

    ``p`` in [0, 1) is the drop probability (``p=0`` returns ``tau``
    unchanged). The rescaling keeps the expected value of every entry equal
    to ``tau``. Deterministic for a given ``seed``.
    """
    check_task_vector(task_vector, "task_vector")
    p = check_fraction(p, "p", low_open=False, high_open=True)
    _check_seed(seed)
    out = {}
    for n, t in task_vector.items():
        keep = torch.rand(t.shape, generator=_generator(seed, n)) >= p
        out[n] = torch.where(keep, t.float() / (1 - p), 0.0).to(t.dtype)
    return TaskVector(out)


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

