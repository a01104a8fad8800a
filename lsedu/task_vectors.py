"""Task vectors: fine-tuning as a displacement in weight space.

Ilharco et al. 2023, "Editing Models with Task Arithmetic" (arXiv 2212.04089),
Sec. 2: a task vector is ``tau = theta_ft - theta_pre``. Task vectors are values:
``+``, unary ``-`` and scalar ``*`` return new task vectors, and
``tau.apply_to(base, lam)`` returns a new state dict ``base + lam * tau``.
Explained in notebook 03 (task arithmetic); first used in notebook 00.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator, Mapping

import torch

from ._checks import (
    StateDict,
    check_finite,
    check_no_overflow,
    compute_dtype,
    check_floating,
    check_same_layout,
    check_scalar,
    check_state_dict,
    check_tensor_dict,
)


def _patterns(patterns, arg: str) -> list[str] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Iterable):
        raise TypeError(f"{arg} must be a glob pattern or a list of them, got {type(patterns).__name__}")
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str):
            raise TypeError(f"{arg} must be glob pattern strings, got {type(p).__name__}")
    return patterns


def select(
    names: Iterable[str],
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> list[str]:
    """Names that match any ``include`` glob and no ``exclude`` glob, in input order.

    Patterns are shell-style globs matched against the whole name, e.g.
    ``include="encoder.layer.*"`` (only the transformer layers) or
    ``exclude=["classifier.*", "*.position_ids"]`` (no heads, no index buffers).
    ``include=None`` means every name. A pattern that matches nothing is an
    error: it is almost always a typo or a model with other names.

    Not called in a notebook: ``TaskVector.from_models`` and the recipes of ``lsedu merge`` (their ``include``
    and ``exclude``) choose their tensors with it; see the appendix notebook (appendix_streaming_merge.ipynb).
    """
    names = list(names)
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    for arg, pats in (("include", inc), ("exclude", exc)):
        for p in pats or []:
            if not any(fnmatch.fnmatchcase(n, p) for n in names):
                raise ValueError(f"{arg} pattern {p!r} matches no parameter name (first names: {names[:3]})")
    keep = [n for n in names if inc is None or any(fnmatch.fnmatchcase(n, p) for p in inc)]
    return [n for n in keep if not any(fnmatch.fnmatchcase(n, p) for p in exc or [])]


def apply_vector(base: Mapping[str, torch.Tensor], vector: Mapping[str, torch.Tensor], lam: float) -> StateDict:
    """``base + lam * vector``, computed in the base's dtype (float16 and bfloat16 in float32) and cast back.

    Tensors of ``base`` outside ``vector`` are copied, so the result loads into
    the same model. Every merge ends with this step; it assumes checked inputs.
    A result too large for its dtype (a huge ``lam``, say) is an error that
    names the tensor, never a model of inf and NaN.

    Not called in a notebook: every merge and ``TaskVector.apply_to`` end with it; ``apply_to`` is explained
    in notebook 01 (01_weights_as_vectors.ipynb).
    """
    out = {}
    for n, t in base.items():
        if n not in vector:
            out[n] = t.clone()
            continue
        acc = compute_dtype(t.dtype)
        if abs(lam) > torch.finfo(acc).max:  # lam itself becomes inf in the dtype computed in
            raise ValueError(f"tensor {n!r}: lam={lam:g} overflows {str(acc).removeprefix('torch.')}, the dtype the "
                             "tensor is computed in; use a smaller lam")
        merged = (t.to(acc) + lam * vector[n].to(acc)).to(t.dtype)
        out[n] = check_no_overflow(n, merged, f"the merged values (lam={lam:g}) overflow",
                                   _remedy(t.dtype, "use a smaller lam"))
    return out


def _remedy(dtype: torch.dtype, first: str | None = None) -> str:
    wider = {torch.float16: "float32", torch.bfloat16: "float32", torch.float32: "float64"}.get(dtype)
    convert = f"convert the models to {wider} first" if wider else "no wider dtype holds these values"
    return convert if first is None else f"{first}, or {convert}" if wider else first


def _no_overflow(name: str, t: torch.Tensor, what: str) -> torch.Tensor:
    return check_no_overflow(name, t, f"{what} overflows", _remedy(t.dtype, "scale them down"))


class TaskVector(Mapping):
    """A task vector ``tau``: a read-only mapping of parameter name -> tensor.

    Build one with :meth:`from_models`. Arithmetic never changes its operands:

    >>> tau = TaskVector.from_models(pre, ft)          # doctest: +SKIP
    >>> merged = (tau_a + tau_b).apply_to(pre, 0.3)    # doctest: +SKIP
    >>> forget = (-tau_a).apply_to(pre, 1.0)            # doctest: +SKIP

    The tensors are not copied on construction; lsedu never writes into them.

    Explained in notebook 01 (01_weights_as_vectors.ipynb).
    """

    def __init__(self, vector: Mapping[str, torch.Tensor]):
        check_tensor_dict(vector, "vector")
        check_floating(vector, "vector")
        self._v: dict[str, torch.Tensor] = dict(vector)

    @classmethod
    def from_models(
        cls,
        pretrained: Mapping[str, torch.Tensor],
        finetuned: Mapping[str, torch.Tensor],
        *,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
    ) -> "TaskVector":
        """``tau = theta_ft - theta_pre`` over the selected floating-point tensors.

        Integer and bool buffers (``position_ids``, ``num_batches_tracked``)
        are always left out: they are not weights. Use ``include``/``exclude``
        (see :func:`select`) to leave out heads or embeddings. The difference
        is taken in the models' dtype; one too large for it (two float16
        models near the float16 limit) is an error that names the tensor.
        """
        check_state_dict(pretrained, "pretrained")
        check_state_dict(finetuned, "finetuned")
        check_same_layout(pretrained, finetuned, "pretrained", "finetuned")
        floating = [n for n, t in pretrained.items() if t.is_floating_point()]
        names = select(floating, include, exclude)
        if not names:
            raise ValueError("the selection (include/exclude) leaves no floating-point tensor in the task vector")
        return cls({n: check_no_overflow(n, finetuned[n] - pretrained[n], "the task vector (finetuned - pretrained) "
                                         "overflows", _remedy(pretrained[n].dtype)) for n in names})

    # --- Mapping ---------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._v[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)

    def __repr__(self) -> str:
        return f"TaskVector({len(self)} tensors, {self.numel():,} entries, norm={self.norm():.4g})"

    # --- arithmetic ------------------------------------------------------
    def _zip(self, other, op: str) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
        if not isinstance(other, Mapping):
            raise TypeError(f"cannot {op} a TaskVector and a {type(other).__name__}")
        check_same_layout(self, other, "left operand", "right operand")
        for n in self:
            yield n, self[n], other[n]

    def __add__(self, other) -> "TaskVector":
        if isinstance(other, (int, float)) and other == 0:  # lets sum() start from 0
            return self
        return TaskVector({n: _no_overflow(n, a + b, "the sum of the task vectors")
                           for n, a, b in self._zip(other, "add")})

    __radd__ = __add__

    def __sub__(self, other) -> "TaskVector":
        return TaskVector({n: _no_overflow(n, a - b, "the difference of the task vectors")
                           for n, a, b in self._zip(other, "subtract")})

    def __neg__(self) -> "TaskVector":
        return TaskVector({n: -t for n, t in self.items()})

    def __mul__(self, scalar) -> "TaskVector":
        if isinstance(scalar, Mapping):
            raise TypeError("TaskVector * TaskVector is not defined; multiply by a number")
        s = check_scalar(scalar, "scalar")
        return TaskVector({n: _no_overflow(n, t * s, f"the task vector times {s:g}") for n, t in self.items()})

    __rmul__ = __mul__

    def apply_to(self, base: Mapping[str, torch.Tensor], scaling: float = 1.0) -> StateDict:
        """A new state dict ``theta = theta_base + scaling * tau``.

        Tensors of ``base`` outside the task vector (heads, buffers) are
        copied unchanged, so the result loads into the same model.
        """
        check_state_dict(base, "base")
        check_same_layout(base, self, "base", "task vector", subset=True)
        check_finite(self, "task vector")
        return apply_vector(base, self, check_scalar(scaling, "scaling"))

    # --- geometry --------------------------------------------------------
    def numel(self) -> int:
        return sum(t.numel() for t in self.values())

    def norm(self) -> float:
        """Euclidean norm over all entries, accumulated tensor by tensor in float64."""
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in self.values()))

    def to_dict(self) -> StateDict:
        """A plain ``dict`` of cloned tensors, e.g. for ``safetensors.torch.save_file``."""
        return {n: t.clone() for n, t in self.items()}


def cosine_similarity(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """``<a, b> / (|a| |b|)`` over all entries, computed tensor by tensor (no concatenation).

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """
    check_tensor_dict(a, "a")
    check_tensor_dict(b, "b")
    check_same_layout(a, b, "a", "b")
    check_finite(a, "a")
    check_finite(b, "b")
    dot = na = nb = 0.0
    for n in a:
        x, y = a[n].double(), b[n].double()
        dot += float((x * y).sum())
        na += float(x.pow(2).sum())
        nb += float(y.pow(2).sum())
    if na == 0 or nb == 0:
        raise ValueError("cosine similarity is undefined: one of the task vectors is all zeros")
    return dot / math.sqrt(na * nb)
