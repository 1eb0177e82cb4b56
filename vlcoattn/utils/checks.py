"""Argument checks with one message style, shared by configs and modules: ``<name> must be ..., got ...``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

__all__ = ["check_choice", "check_multiple", "check_positive"]


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
