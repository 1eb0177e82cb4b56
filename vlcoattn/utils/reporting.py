"""What benchmark and study reports share: the line naming the machine, and markdown tables."""

from __future__ import annotations

import platform

import torch

__all__ = ["machine", "markdown_table"]


def machine() -> str:
    """One line naming the machine the figures come from."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads (torch {torch.__version__}), no GPU"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
