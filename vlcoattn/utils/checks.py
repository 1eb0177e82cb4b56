"""Argument checks with one message style, shared by configs and modules: ``<name> must be ..., got ...``."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["check_choice", "check_indices", "check_multiple", "check_positive", "reject_unknown_keys"]

# what transformers' config machinery itself passes to a config's ``__post_init__`` besides its fields
_CONFIG_MACHINERY_KEYS = frozenset({
    "model_type", "name_or_path", "output_attentions", "attn_implementation", "experts_implementation",
    "torch_dtype", "num_labels",
})


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """ValueError unless ``value`` > 0 (>= 0 with ``allow_zero``)."""
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_multiple(name: str, value: int, of: int, why: str) -> None:
    """ValueError unless ``value`` is a multiple of ``of`` (``why``: what needs it)."""
    if value % of:
        raise ValueError(f"{name} must be a multiple of {of} ({why}), got {value}")


def check_indices(name: str, values: Collection[int], n: int, what: str, *, allow_empty: bool = True) -> list[int]:
    """``values``, indices into ``n`` things (negative from the end, as Python's), as sorted positions
    0 .. n - 1 with duplicates merged; ValueError naming ``name`` (``what``: what they index) for one out of
    range, or for none at all unless ``allow_empty``."""
    if (not values and not allow_empty) or any(not -n <= i < n for i in values):
        raise ValueError(f"{name} must be {what} in -{n} .. {n - 1}, got {list(values)}")
    return sorted({int(i) % n for i in values})


def reject_unknown_keys(owner: str, extra: Mapping[str, Any], valid: Collection[str]) -> None:
    """ValueError naming the first key of ``extra`` (a config's leftover keyword arguments) that is neither
    transformers' own nor private, with the closest of ``valid``: a typo must not pass as an attribute."""
    unknown = [k for k in extra if not k.startswith("_") and k not in _CONFIG_MACHINERY_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"
        raise ValueError(f"{owner}: unknown option {unknown[0]!r}{hint}")
