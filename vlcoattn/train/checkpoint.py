"""Atomic, resumable checkpoints.

Layout of ``<run>/checkpoints/step-00001234/``::

    model/          save_pretrained dir (config.json, model.safetensors, tokenizer, vocabularies)
    trainer.pt      optimizer (DDP), scheduler, step, ... (rank 0)
    sharded/        FSDP runs: every rank's shards of the weights and optimizer state (torch DCP)
    rank{r}.pt      per-rank state: RNG of every generator, data position
    COMPLETE        written last

A checkpoint is assembled in ``.tmp-step-...``, marked COMPLETE, then renamed into place with
``os.replace`` (atomic on one filesystem), so a run killed mid-write leaves only a temp dir that
:func:`latest_checkpoint` never picks. Everything is read back with ``torch.load(weights_only=True)``:
no pickle code runs from a checkpoint file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

COMPLETE = "COMPLETE"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    done = [p for p in root.glob(PREFIX + "*") if p.is_dir() and (p / COMPLETE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest COMPLETE checkpoint, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def resolve_resume(resume: str | None, root: str | Path) -> Path | None:
    """``--resume`` value -> checkpoint path: None, 'latest' (None when there is none yet) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(root)
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint dir (no {COMPLETE} marker)")
    return path


def save_checkpoint(
    root: str | Path,
    step: int,
    save_model: Callable[[Path], None],
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    rank: int = 0,
    keep_last: int = 3,
    barrier: Callable[[], None] = lambda: None,
    save_shards: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; every rank calls this (rank 0 writes the shared parts).

    save_model(dir): writes the save_pretrained dir (model, tokenizer, vocabularies).
    keep_last: complete checkpoints kept (older ones are deleted after the new one is in place).
    barrier: the process group's barrier in DDP, so rank 0 renames only after all ranks wrote.
    save_shards(dir): called on every rank (FSDP: each writes its shards; needs a filesystem all ranks share).
    """
    root = Path(root)
    tmp, final = root / (TMP_PREFIX + checkpoint_name(step)), root / checkpoint_name(step)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rank_state, tmp / f"rank{rank}.pt")
    if save_shards is not None:
        save_shards(tmp)
    if rank == 0:
        save_model(tmp / "model")
        torch.save(trainer_state, tmp / "trainer.pt")
    barrier()
    if rank == 0:
        (tmp / COMPLETE).write_text(json.dumps({"step": step}))
        _fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_model_weights(model: torch.nn.Module, model_dir: str | Path) -> None:
    """Load a save_pretrained dir's ``model.safetensors`` into the live ``model`` (no second model built).
    Tied weights (saved once) may be missing from the file; anything else missing or unexpected is an error."""
    state = load_file(str(Path(model_dir) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    tied = {n for group in names.values() if len(group) > 1 for n in group}
    if unexpected or set(missing) - tied:
        raise ValueError(f"{model_dir} does not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """The shared part of a complete checkpoint (optimizer, scheduler, step, world size), without pickle code."""
    return torch.load(Path(path) / "trainer.pt", map_location="cpu", weights_only=True)


def load_rank_state(path: str | Path, rank: int) -> dict[str, Any]:
    """The state rank ``rank`` wrote (RNG, data position), without pickle code."""
    rank_file = Path(path) / f"rank{rank}.pt"
    if not rank_file.is_file():
        raise ValueError(f"checkpoint {path} has no state for rank {rank}")
    return torch.load(rank_file, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """State of every random generator a training step may touch: python, numpy, torch (CPU, CUDA)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

