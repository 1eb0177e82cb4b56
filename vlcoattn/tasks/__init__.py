"""Tasks: one registry of :class:`TaskSpec` s, the single home of everything that differs between tasks.

    from vlcoattn.tasks import get_task
    spec = get_task("vqa+ground")
    inputs = spec.model_inputs(batch, device)      # forward() kwargs: text, pixels, targets
    counts = spec.items(batch)                     # what each loss averages over

The specs: :mod:`.vision` (``vqa``, ``ground``, ``vqa+ground``), :mod:`.text` (``cls``, ``lm``) and
:mod:`.phrase` (``phrase``, ``vqa+ground+phrase``).
Adding a task is one spec (:func:`register_task`) plus its model's head (docs/training.md).
"""

from . import vision  # noqa: F401, I001  (registers vqa, ground, vqa+ground first: the order names are listed in)
from . import text  # noqa: F401  (registers cls, lm)
from . import phrase  # noqa: F401  (registers phrase, vqa+ground+phrase)
from .spec import (
    IGNORE_INDEX,
    TaskSpec,
    canonical_name,
    check_batchable,
    get_task,
    register_task,
    resolve,
    rows_of,
    sample_task_names,
    task_names,
    task_of_model,
)

__all__ = [
    "IGNORE_INDEX", "TaskSpec", "canonical_name", "check_batchable", "get_task", "model_inputs", "register_task",
    "resolve", "rows_of", "sample_task_names", "task_names", "task_of_model",
]


def model_inputs(task: str, batch: dict, device, targets: bool = True) -> dict:
    """``get_task(task).model_inputs(batch, device, targets)``: the forward() kwargs of ``task``'s model."""
    return get_task(task).model_inputs(batch, device, targets)
