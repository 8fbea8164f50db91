"""Argument constraints declared in the type, as jsonargparse checks them on the command line.

The ``__init__`` arguments of models and callbacks carry their range in their annotation (jsonargparse's
``PositiveInt``, ``PositiveFloat``, ``NonNegativeFloat``, ``ClosedUnitInterval`` …, or the two below); the command
line refuses a value out of range while parsing, and ``--help`` pages show the type. :func:`check_constraints`
applies the same annotations to a call from Python.
"""

from __future__ import annotations

import functools
import re
import typing
from collections.abc import Callable
from typing import Any

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

from wcl.errors import ConfigError

__all__ = ["DESCRIPTIONS", "ClassCount", "ClosedUnitInterval", "Momentum", "NonNegativeFloat", "NonNegativeInt",
           "OpenUnitInterval", "PositiveFloat", "PositiveInt", "check_constraints", "restriction_text"]

Momentum = restricted_number_type("Momentum", float, [(">=", 0), ("<", 1)], docstring="a float in [0, 1)")
ClassCount = restricted_number_type("ClassCount", int, (">=", 2), docstring="an int >= 2")


# How messages and help name each type: "model.width must be an int > 0, got 'x'".
DESCRIPTIONS = {"PositiveInt": "an int > 0", "NonNegativeInt": "an int >= 0", "ClassCount": "an int >= 2",
                "PositiveFloat": "a number > 0", "NonNegativeFloat": "a number >= 0",
                "ClosedUnitInterval": "a number in [0, 1]", "OpenUnitInterval": "a number in (0, 1)",
                "Momentum": "a number in [0, 1)"}


def restriction_text(restriction: str) -> str:
    """jsonargparse's ``v>=0 and v<1`` as ``>= 0 and < 1``."""
    return re.sub(r"v\s*(>=|<=|==|!=|>|<)\s*", r"\1 ", restriction)


@functools.cache
def _constrained(fn: Callable) -> dict[str, tuple[type, ...]]:
    """The restricted number types in each parameter's annotation (``X | None`` → ``X``)."""
    out = {}
    for name, hint in typing.get_type_hints(fn).items():
        kinds = tuple(t for t in (typing.get_args(hint) or (hint,)) if isinstance(t, type)
                      and issubclass(t, (int, float)) and t.__module__ == "jsonargparse.typing")
        if kinds:
            out[name] = kinds
    return out


def check_constraints(fn: Callable, values: dict[str, Any], prefix: str) -> None:
    """Each of ``values`` that ``fn``'s annotation restricts conforms to it, else a :class:`ConfigError` naming
    ``{prefix}{name}`` (the check the command line's parser makes, for a call from Python)."""
    for name, kinds in _constrained(fn).items():
        value = values.get(name)
        if value is None:
            continue
        try:
            if isinstance(value, bool):
                raise ValueError(f"{value} not a number")
            for kind in kinds:
                kind(value)
        except ValueError:
            need = DESCRIPTIONS.get(kinds[0].__name__, kinds[0].__name__)
            raise ConfigError(f"{prefix}{name} must be {need}, got {value!r}") from None
