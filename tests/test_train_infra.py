"""Run configs (YAML + overrides, validation) and atomic checkpoints."""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from vlcoattn.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_rank_state,
    load_trainer_state,
    resolve_resume,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vlcoattn.train.config import load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    amp: bool = False
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)

    def validate(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


def test_yaml_plus_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("name: demo\noptim:\n  lr: 0.01\n")
    cfg = load_config(Run, cfg_file, ["steps=5", "optim.lr=3e-4", "optim.betas=[0.8, 0.9]", "amp=true", "resume=latest"])
    assert cfg == Run(name="demo", steps=5, amp=True, resume="latest", optim=Optim(lr=3e-4, betas=[0.8, 0.9]))
    assert isinstance(load_config(Run, None, ["optim.lr=1"]).optim.lr, float)  # int widened to float
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Run, tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stepz=3"], "unknown config key 'stepz'; valid keys: amp, name, optim, resume, steps"),
        (["optim.momentum=0.9"], "unknown config key 'optim.momentum'; valid keys in optim: betas, lr"),
        (["steps=ten"], "config key 'steps': expected int, got 'ten'"),
        (["steps=1.5"], "config key 'steps': expected int"),
        (["amp=3"], "config key 'amp': expected bool"),
        (["optim.betas=0.9"], "config key 'optim.betas': expected a list"),
        (["steps=0"], "steps must be positive"),
        (["steps"], "not of the form key.sub=value"),
    ],
)
def test_bad_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(Run, None, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")


def write(root, step, keep_last=3):
    def save_model(d):
        d.mkdir()
        (d / "weights.txt").write_text(str(step))

    return save_checkpoint(root, step, save_model, {"step": step, "opt": {"lr": torch.tensor(0.1)}},
                           {"rng": rng_state(), "data": {"consumed": step * 4}}, keep_last=keep_last)


def test_checkpoints_are_complete_and_pruned(tmp_path):
    for step in (10, 20, 30, 40):
        write(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    trainer, rank = load_trainer_state(latest_checkpoint(tmp_path)), load_rank_state(latest_checkpoint(tmp_path), 0)
    assert trainer["step"] == 40 and rank["data"]["consumed"] == 160
    assert resolve_resume("latest", tmp_path).name == "step-00000040"
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "step-00000010"), tmp_path)
    with pytest.raises(ValueError, match="no state for rank 1"):
        load_rank_state(latest_checkpoint(tmp_path), rank=1)


def test_checkpoint_killed_mid_write_is_never_resumed(tmp_path):
    """A process SIGKILLed while writing leaves a temp dir; 'latest' still names the last complete one."""
    write(tmp_path, 10)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from vlcoattn.train.checkpoint import save_checkpoint
        def save_model(d):
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        save_checkpoint(Path({str(tmp_path)!r}), 20, save_model, {{"step": 20}}, {{}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert (tmp_path / ".tmp-step-00000020").is_dir()
    assert latest_checkpoint(tmp_path).name == "step-00000010"
    write(tmp_path, 20)  # a later save of the same step replaces the debris
    assert latest_checkpoint(tmp_path).name == "step-00000020"
    assert not (tmp_path / ".tmp-step-00000020").exists()


def test_rng_state_roundtrip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    write(tmp_path, 1)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    state = load_rank_state(latest_checkpoint(tmp_path), 0)
    set_rng_state(state["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    torch.testing.assert_close(got[2], expected[2])


def _build_counting(dst: str, log: str, arrived, processes: int) -> None:
    """One process of a node: builds ``dst`` only if it takes the lock first. The builder waits, inside
    the lock, until every process has found ``dst`` missing and gone for the lock (each signals
    ``arrived`` just before taking it), so all of them really contend, without relying on timing."""
    from filelock import FileLock

    from vlcoattn.train import distributed

    class SignallingLock(FileLock):
        def __enter__(self):
            arrived.release()
            return super().__enter__()

    distributed.FileLock = SignallingLock

    def build(out: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        for _ in range(processes):  # every process, this one included, is at the lock
            assert arrived.acquire(timeout=120), "a process never reached the lock"
        out.mkdir()
        (out / "config.json").write_text("{}")

    distributed.build_once_per_node(Path(dst), "config.json", build)


def test_build_once_per_node_builds_once_for_all_processes_of_a_node(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    arrived = ctx.Semaphore(0)
    procs = [ctx.Process(target=_build_counting, args=(str(tmp_path / "asset"), str(tmp_path / "log"), arrived, 3))
             for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert (tmp_path / "log").read_text() == "built\n" and (tmp_path / "asset" / "config.json").is_file()
    assert not list(tmp_path.glob(".tmp-*"))


def test_build_once_per_node_refuses_a_build_that_wrote_no_marker(tmp_path):
    from vlcoattn.train.distributed import build_once_per_node

    with pytest.raises(RuntimeError, match=r"wrote no config\.json"):
        build_once_per_node(tmp_path / "asset", "config.json", lambda out: out.mkdir())


def test_the_tests_stay_offline_even_when_the_caller_enables_the_hub():
    """conftest forces the offline switches over the caller's environment: with HF_HUB_OFFLINE=0 and
    TRANSFORMERS_OFFLINE=0 set, a hub id still fails at once from the cache, without a network request."""
    script = textwrap.dedent("""
        import sys, time
        sys.path.insert(0, "tests")
        import conftest  # noqa: F401  (what pytest imports first)
        import huggingface_hub.constants
        from transformers import AutoTokenizer
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True, "hub online"
        start = time.perf_counter()
        try:
            AutoTokenizer.from_pretrained("google-bert/bert-base-uncased", cache_dir=sys.argv[1])
        except OSError as e:
            print(f"{time.perf_counter() - start:.3f}", str(e).splitlines()[0])
        else:
            print("loaded from the hub")
    """)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "PYTHONPATH": str(root)}
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.run([sys.executable, "-c", script, cache], cwd=root, env=env, capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    elapsed, message = proc.stdout.strip().split(" ", 1)
    assert float(elapsed) < 2.0 and "couldn't find them in the cached files" in message, proc.stdout
