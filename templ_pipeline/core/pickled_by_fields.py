"""Dataclasses that cross a process boundary pickled as their constructor and its arguments.

A ``slots=True`` dataclass pickles through the ``__getstate__``/``__setstate__`` that
:mod:`dataclasses` writes, and these look the class's fields up again for every object,
in Python. A campaign parent unpickles each query's outcome (a dozen such objects) just
after waking from a wait, on caches its workers have made cold; measured there, that
lookup was a third of the outcome's unpickling and the unpickling a sixth of the
parent's CPU per query. Pickled as ``cls(*values)``, the values travel as one tuple
and the parent runs the class's own ``__init__``; the standard library only.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, TypeVar

T = TypeVar("T")


def pickled_by_fields(cls: type[T]) -> type[T]:
    """Give dataclass ``cls`` a ``__reduce__`` that pickles an object as its class and field values in order.

    Every field must be an ``__init__`` argument (an ``init=False`` field could not be
    passed back), and ``__post_init__``, if any, runs again on unpickling.
    """
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not fields or any(not field.init for field in fields):
        raise TypeError(f"{cls.__name__}: pickled_by_fields needs fields that are all __init__ arguments")
    getter = operator.attrgetter(*(field.name for field in fields))
    if len(fields) == 1:
        def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
            return type(self), (getter(self),)
    else:
        def __reduce__(self: Any) -> tuple[Any, tuple[Any, ...]]:
            return type(self), getter(self)
    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls
