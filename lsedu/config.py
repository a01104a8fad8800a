"""Config validation, declared once: every config dataclass of lsedu checks its fields here.

A config is a frozen dataclass that derives from :class:`Config` and declares
each field's check next to its default::

    @dataclass(frozen=True)
    class FinetuneConfig(Config):
        epochs: int = checked(5, integer(low=1))
        lr: float = checked(1e-4, number(low=0, low_open=True))
        warmup: float = checked(0.1, number(low=0, high=1, high_open=True))

``Config.__post_init__`` runs every field's check, stores the value the check
returns (tuples for sequences, floats for numbers), and names the class, the
field and the value in its error::

    ValueError: FinetuneConfig.epochs must be an int >= 1, got 0

:meth:`Config.to_dict` gives the JSON values that cache keys are built from,
and :meth:`Config.replace` a changed copy, checked again. The same checks
serve function arguments through :func:`check_arg`
(``lsedu.localize_trained``, the merge recipe).
"""

from __future__ import annotations

import dataclasses
import math
from numbers import Real
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Check", "Config", "boolean", "check_arg", "checked", "choice", "integer", "integers", "number",
           "numbers", "optional"]


class Check:
    """A field check: ``check(value) -> stored value``, or an error that says what the value must be.

    ``what`` completes the sentence "X must be ...". A check raises
    ``error`` (ValueError, or TypeError where the type is what is wrong);
    with ``right_type``, a value of the wrong type (a string for a number)
    is a TypeError and a value of the right type out of range a ValueError.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """

    def __init__(self, what: str, accept: Callable[[Any], bool], convert: Callable[[Any], Any] = lambda v: v,
                 error: type[Exception] = ValueError, right_type: Callable[[Any], bool] | None = None):
        self.what, self.accept, self.convert, self.error = what, accept, convert, error
        self.right_type = right_type

    def __call__(self, value, name: str):
        if not self.accept(value):
            wrong_type = self.right_type is not None and not self.right_type(value)
            raise (TypeError if wrong_type else self.error)(f"{name} must be {self.what}, got {value!r}")
        return self.convert(value)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _bounds(low, high, low_open: bool, high_open: bool) -> tuple[str, Callable[[Any], bool]]:
    def inside(v) -> bool:
        if low is not None and (v <= low if low_open else v < low):
            return False
        return not (high is not None and (v >= high if high_open else v > high))

    if low is not None and high is not None:
        text = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        text = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        text = f"{'<' if high_open else '<='} {high:g}"
    else:
        text = ""
    return text, inside


def integer(low: int | None = None, high: int | None = None, *, type_error: bool = False) -> Check:
    """An int (not a bool) in ``[low, high]`` (``type_error``: a value that is no int at all is a TypeError).

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    text, inside = _bounds(low, high, False, False)
    return Check(f"an int {text}".rstrip(), lambda v: _is_int(v) and inside(v), int,
                 right_type=_is_int if type_error else None)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, type_error: bool = False) -> Check:
    """A finite int or float (not a bool) between ``low`` and ``high``; stored as a float.

    ``type_error``: a value that is no number at all (a string, a bool) is a
    TypeError; NaN, infinities and numbers out of range are ValueErrors.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    text, inside = _bounds(low, high, low_open, high_open)
    real = lambda v: isinstance(v, Real) and not isinstance(v, (bool, np.bool_))  # noqa: E731
    return Check(f"a finite number {text}".rstrip(), lambda v: real(v) and math.isfinite(v) and inside(v), float,
                 right_type=real if type_error else None)


def boolean() -> Check:
    """True or False; anything else (a string such as ``"false"`` too) is a TypeError.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    return Check("True or False", lambda v: isinstance(v, bool), error=TypeError)


def choice(*options: str) -> Check:
    """One of ``options``.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    return Check(f"one of {list(options)}", lambda v: isinstance(v, str) and v in options)


def optional(check: Check) -> Check:
    """None, or what ``check`` accepts.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    return Check(f"None or {check.what}", lambda v: v is None or check.accept(v),
                 lambda v: None if v is None else check.convert(v), check.error)


def _sequence_of(item: Check, unique: bool) -> Check:
    def accept(v) -> bool:
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) == 0:
            return False
        if not all(item.accept(x) for x in v):
            return False
        return not unique or len(set(v)) == len(v)

    what = f"a non-empty tuple, each item {item.what}"
    return Check(what + (", none repeated" if unique else ""), accept,
                 lambda v: tuple(item.convert(x) for x in v))


def integers(low: int | None = None, high: int | None = None, unique: bool = True) -> Check:
    """A non-empty sequence of ints in ``[low, high]`` (no repeats when ``unique``); stored as a tuple.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    return _sequence_of(integer(low, high), unique)


def numbers(low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False, unique: bool = False) -> Check:
    """A non-empty sequence of finite numbers between ``low`` and ``high``; stored as a tuple of floats.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    return _sequence_of(number(low, high, low_open=low_open, high_open=high_open), unique)


def checked(default: Any = dataclasses.MISSING, check: Check | None = None, **field_kwargs) -> Any:
    """A dataclass field whose value :class:`Config` checks with ``check``.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    return dataclasses.field(default=default, metadata={"check": check}, **field_kwargs)


def check_arg(value, name: str, check: Check):
    """``check`` applied to a function argument ``name``: the stored value, or an error naming ``name``.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """
    return check(value, name)


class Config:
    """Base of lsedu's frozen config dataclasses: field checks, ``to_dict`` and ``replace``.

    Not called in a notebook: lsedu declares its configs with it (the zoo's, the merge
    recipe's, and the case studies' config of notebook 07, 07_case_vision.ipynb).
    """

    def __post_init__(self):
        cls = type(self).__name__
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(getattr(self, f.name), f"{cls}.{f.name}"))

    def to_dict(self) -> dict:
        """The config as JSON values (tuples become lists when serialized)."""
        return dataclasses.asdict(self)

    def replace(self, **changes):
        """A copy with ``changes``, checked again; an unknown field is a TypeError naming it."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {unknown}; fields: {sorted(known)}")
        return dataclasses.replace(self, **changes)
