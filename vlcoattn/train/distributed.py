"""Process-group setup for single-process and ``torchrun`` jobs (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from filelock import FileLock


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> torch.Tensor:
        """In-place all-reduce (a no-op in a single process); returns the tensor."""
        if self.distributed:
            dist.all_reduce(tensor, op=op)
        return tensor


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE, RANK,
    LOCAL_RANK, MASTER_ADDR/PORT), or run as a single process. ``device``: auto | cpu | cuda."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("run.device=cuda but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
        )
    if not use_cuda:  # share the cores between the processes of this node
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistInfo(rank, world, local_rank, dev)


def build_once_per_node(dst: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Make ``dst`` (complete when ``dst/marker`` exists) once on this node: the first process to take
    the lock file beside it builds it into a temp dir and renames it into place; the node's other
    processes wait on the lock, then find it done.

    Per node, not per job: nodes without a shared filesystem each need their own copy (a file written
    by global rank 0 exists only on node 0). Call it before joining the process group: transformers'
    ``save_pretrained`` writes nothing on a global rank other than 0 once the group exists. On a shared
    filesystem the rename is atomic and the first node's copy wins. Builds must be deterministic.
    """
    if (dst / marker).is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dst.parent / f".{dst.name}.lock")):
        if (dst / marker).is_file():  # another process of this node built it while we waited
            return dst
        tmp = dst.with_name(f".tmp-{dst.name}-{socket.gethostname()}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(f"building {dst} wrote no {marker}")
        try:
            os.replace(tmp, dst)
        except OSError:  # another node (shared filesystem) put its copy there first
            if not (dst / marker).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
