"""Input checks shared by every merge function.

Every check raises a ``TypeError`` or ``ValueError`` whose message names the
argument and, where there is one, the tensor at fault: a reader who passes the
wrong thing should learn *what* is wrong and *where* without a debugger.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch

StateDict = dict[str, torch.Tensor]
Mask = dict[str, torch.Tensor]


def _preview(names) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_tensor_dict(sd, arg: str) -> None:
    """``sd`` must be a mapping of str -> torch.Tensor.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    if not isinstance(sd, Mapping):
        raise TypeError(f"{arg} must be a dict of name -> torch.Tensor (a state dict), got {type(sd).__name__}")
    for name in sd.keys():
        if not isinstance(name, str):
            raise TypeError(f"{arg} has a key {name!r} of type {type(name).__name__}; keys must be parameter names (str)")
        t = sd[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{arg}[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        check_plain_tensor(t, f"{arg}[{name!r}]")


#: Storage-only dtypes: no arithmetic is defined on them, so a merge cannot compute with them.
FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
                                           "float8_e8m0fnu") if hasattr(torch, n))


def check_plain_tensor(t: torch.Tensor, what: str) -> None:
    """``t`` holds data a merge can compute with: a dense (strided) tensor, not on the meta device, not float8.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    if t.is_meta:
        raise ValueError(f"{what} is on the meta device: it has a shape but no data (load the weights first)")
    if t.layout != torch.strided:
        raise ValueError(f"{what} is a {t.layout} tensor; merges take dense tensors (call .to_dense() first)")
    if t.dtype in FLOAT8:
        raise TypeError(f"{what} has dtype {t.dtype}, a storage format without arithmetic; "
                        "convert it to bfloat16 or float32 first")


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in ``t``. A finite sum proves it in one fast reduction (any NaN or inf would
    make the sum non-finite); only when the sum is not finite, perhaps by overflow, look entry by entry.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    if not t.is_floating_point() or bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a merge computes in for tensors of ``dtype``: float16 and bfloat16 in float32 (then cast
    back), float32 and float64 in their own, so that float64 inputs are never rounded to float32.

    Not called in a notebook: lsedu's merges compute with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    return torch.promote_types(dtype, torch.float32)


def check_no_overflow(name: str, t: torch.Tensor, what: str, remedy: str) -> torch.Tensor:
    """``t``, a result computed from finite inputs, is finite; else a one-line error names tensor ``name``:
    ``"tensor 'name': WHAT DTYPE (...); REMEDY"``, ``what`` ending in its verb ("the merged values overflow").
    Returns ``t``.

    Not called in a notebook: lsedu's merges check their results with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    if not all_finite(t):
        bad, dtype = int((~torch.isfinite(t)).sum()), str(t.dtype).removeprefix("torch.")
        raise ValueError(f"tensor {name!r}: {what} {dtype} ({bad} non-finite value(s) from finite inputs); {remedy}")
    return t


def check_finite(sd: Mapping[str, torch.Tensor], arg: str) -> None:
    """Floating tensors of ``sd`` hold no NaN or inf.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    for name, t in sd.items():
        if not all_finite(t):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{arg}[{name!r}] has {bad} non-finite value(s) (NaN or inf)")


def check_state_dict(sd, arg: str) -> None:
    """``sd`` is a non-empty mapping of str -> tensor, with no NaN or inf in it.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    check_tensor_dict(sd, arg)
    if len(sd) == 0:
        raise ValueError(f"{arg} is empty: it holds no tensors")
    check_finite(sd, arg)


def check_same_layout(ref: Mapping, other: Mapping, ref_arg: str, other_arg: str, *, subset: bool = False) -> None:
    """``other`` has the names, shapes and dtypes of ``ref``.

    With ``subset=True`` ``other`` may leave names out (a task vector over a
    selection of the base's parameters), but must not add any.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    extra = other.keys() - ref.keys()
    missing = set() if subset else ref.keys() - other.keys()
    if extra:
        raise ValueError(f"{other_arg} has tensor(s) that {ref_arg} lacks: {_preview(extra)}")
    if missing:
        raise ValueError(f"{other_arg} is missing tensor(s) that {ref_arg} has: {_preview(missing)}")
    for name in other.keys():
        a, b = ref[name], other[name]
        if a.shape != b.shape:
            raise ValueError(
                f"shape mismatch at tensor {name!r}: {ref_arg} has {tuple(a.shape)}, {other_arg} has {tuple(b.shape)}"
            )
        if a.dtype != b.dtype:
            raise ValueError(f"dtype mismatch at tensor {name!r}: {ref_arg} has {a.dtype}, {other_arg} has {b.dtype}")


def check_nonempty_list(items, arg: str, what: str = "models") -> list:
    """``items`` is a non-empty sequence (not a mapping) of ``what``; returns a list.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    if isinstance(items, Mapping) or not isinstance(items, Sequence):
        raise TypeError(f"{arg} must be a list of {what}, got {type(items).__name__}")
    if len(items) == 0:
        raise ValueError(f"{arg} is empty: pass at least one of the {what}")
    return list(items)


def check_fraction(value, arg: str, *, low_open: bool, high_open: bool, low: float = 0.0, high: float = 1.0) -> float:
    """``value`` is a real number (Python or NumPy) in the interval (low|[low, high]|).

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    if not is_real(value):
        raise TypeError(f"{arg} must be a number, got {type(value).__name__}")
    value = float(value)
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if not (lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{arg} must lie in {interval}, got {value!r}")
    return value


def is_real(value) -> bool:
    """A real number: Python or NumPy ints and floats, a one-element tensor is not, nor is a bool.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_scalar(value, arg: str) -> float:
    """``value`` is a finite real number; returns it as a float.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    if not is_real(value):
        raise TypeError(f"{arg} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{arg} must be finite, got {value!r}")
    return value


def check_floating(sd: Mapping[str, torch.Tensor], arg: str) -> None:
    """Every tensor of ``sd`` is floating point (task vectors hold no integer buffers).

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    for name, t in sd.items():
        if not t.is_floating_point():
            raise TypeError(
                f"{arg}[{name!r}] has dtype {t.dtype}; task vectors hold floating-point tensors only "
                "(integer buffers are left out when a task vector is built)"
            )


def check_mask(mask, reference: Mapping[str, torch.Tensor], arg: str, ref_arg: str) -> None:
    """``mask`` is a dict of bool tensors with exactly the names and shapes of ``reference``.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    check_tensor_dict(mask, arg)
    extra = mask.keys() - reference.keys()
    missing = reference.keys() - mask.keys()
    if extra:
        raise ValueError(f"{arg} has tensor(s) that {ref_arg} lacks: {_preview(extra)}")
    if missing:
        raise ValueError(f"{arg} is missing tensor(s) of {ref_arg}: {_preview(missing)}")
    for name, m in mask.items():
        if m.dtype != torch.bool:
            raise TypeError(f"{arg}[{name!r}] must be a torch.bool mask, got dtype {m.dtype}")
        if m.shape != reference[name].shape:
            raise ValueError(
                f"{arg}[{name!r}] has shape {tuple(m.shape)} but {ref_arg}[{name!r}] has shape {tuple(reference[name].shape)}"
            )


def check_task_vector(tv, arg: str = "task_vector") -> None:
    """One task vector: a non-empty dict of finite floating tensors.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    check_state_dict(tv, arg)
    check_floating(tv, arg)


def check_task_vectors(task_vectors, arg: str = "task_vectors") -> list:
    """A non-empty list of task vectors that share one layout.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    tvs = check_nonempty_list(task_vectors, arg, "task vectors")
    for i, tv in enumerate(tvs):
        check_task_vector(tv, f"{arg}[{i}]")
        if i:
            check_same_layout(tvs[0], tv, f"{arg}[0]", f"{arg}[{i}]")
    return tvs


def check_base_and_vectors(base, task_vectors) -> list:
    """``base`` is a state dict and every task vector covers a subset of its floating tensors.

    Not called in a notebook: lsedu's functions check their inputs with it; see "The library in one
    screen" on the book's first page (book/intro.md).
    """
    check_state_dict(base, "base")
    tvs = check_task_vectors(task_vectors)
    check_same_layout(base, tvs[0], "base", "task_vectors[0]", subset=True)
    return tvs
