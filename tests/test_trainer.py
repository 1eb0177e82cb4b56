"""The trainer: DDP == single process, resume == uninterrupted, NaN skipping, evaluate.py, configs."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoProcessor, pipeline

from vlcoattn import VLCoAttnForMultitask, VLCoAttnImageProcessor, VLCoAttnProcessor
from vlcoattn.data import LoaderConfig, ShardSink, build_eval_loader, build_loader, write_synthetic
from vlcoattn.data.read.loader import read_shard
from vlcoattn.data.read.shards import resolve_shards
from vlcoattn.data.write.synthetic import SyntheticConfig
from vlcoattn.eval.runner import evaluate
from vlcoattn.infer import Predictor
from vlcoattn.text import CooBertConfig, CooBertModel
from vlcoattn.train.build import build_model
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.metrics_log import read_metrics
from vlcoattn.train.trainer import Trainer, TrainingError, resolve_data, train

from helpers import processor_for

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, minilm_tokenizer):
    """A tiny CooBERT dir (MiniLM's tokenizer) and a small CLEVR-lite dataset at 64 px."""
    root = tmp_path_factory.mktemp("trainer")
    text = root / "coobert-tiny"
    config = CooBertConfig(
        vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, shared_key_dim=16, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # dropout lives in the fusion layers
    )
    torch.manual_seed(0)
    CooBertModel(config).save_pretrained(text)
    minilm_tokenizer.save_pretrained(text)
    data = root / "clevr"
    write_synthetic(data, 24, seed=0, config=SyntheticConfig(image_size=64), progress=False)
    return {"root": root, "text": text, "data": data}


# the tiny model without dropout (each rank, or each micro-batch shape, would draw other dropout masks)
NO_DROPOUT = {"coattention_config": {"num_layers": 1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
              "vision_config": {"out_indices": [-2]}}


def base_config(assets, run_dir, **over) -> dict:
    """A tiny vqa+ground job: LayerNorm-only backbone (convnext_atto; BatchNorm statistics would differ
    between a 2-rank and a 1-rank batch), one fusion layer."""
    cfg = {
        "task": "vqa+ground",
        "run": {"dir": str(run_dir), "seed": 0, "log_every": 1, "progress": False},
        "model": {"text": str(assets["text"]), "convert_from": None, "backbone": "convnext_atto",
                  "pretrained_backbone": False, "image_size": 64,
                  "config": {"coattention_config": {"num_layers": 1}, "vision_config": {"out_indices": [-2]}}},
        "data": {"train": [str(assets["data"] / "train")], "val": [str(assets["data"] / "val")],
                 "batch_size": 4, "eval_batch_size": 16, "max_text_len": 24, "shuffle_buffer": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "eps": 1e-6},
        "train": {"steps": 3, "report": False},
    }
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def job_of(cfg: dict, tmp_path: Path) -> JobConfig:
    path = tmp_path / f"job-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(JobConfig, path)


def weights(run_dir: Path, sub: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / sub / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"max parameter difference {worst:.3g} > {atol}"


def optimizer_groups(ckpt: Path, scratch: Path) -> list[tuple[dict, list[dict[str, torch.Tensor]]]]:
    """A checkpoint's AdamW state as (hyper-parameters, each parameter's state in the group's order) per
    group: from trainer.pt (parameters by integer id) or, for a sharded checkpoint, from its DCP dir
    gathered into one file (parameters by name)."""
    if (ckpt / "sharded").is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(str(ckpt / "sharded"), str(scratch / f"{ckpt.name}-gathered.pt"))
        optim = torch.load(scratch / f"{ckpt.name}-gathered.pt", weights_only=True)["optimizer"]
    else:
        optim = torch.load(ckpt / "trainer.pt", weights_only=True)["optimizer"]
    hyper = ("lr", "initial_lr", "weight_decay", "eps")
    return [({k: g[k] for k in hyper} | {"betas": tuple(g["betas"])}, [optim["state"][p] for p in g["params"]])
            for g in optim["param_groups"]]


def assert_same_checkpoint_state(a: Path, b: Path, scratch: Path) -> None:
    """Checkpoints ``a`` and ``b`` hold the same weights and optimizer state, bit for bit."""
    assert_same_weights(weights(a, "model"), weights(b, "model"), atol=0.0)
    groups_a, groups_b = optimizer_groups(a, scratch), optimizer_groups(b, scratch)
    assert [h for h, _ in groups_a] == [h for h, _ in groups_b] and len(groups_a) > 1
    for (_, states_a), (_, states_b) in zip(groups_a, groups_b, strict=True):
        assert len(states_a) == len(states_b)
        for x, y in zip(states_a, states_b):
            assert x.keys() == y.keys() == {"step", "exp_avg", "exp_avg_sq"}
            assert all(torch.equal(x[k], y[k]) for k in x)


def run_tool(args: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous; a fixed one collides with other runs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], nproc: int = 2, **kw) -> subprocess.CompletedProcess:
    return run_tool(["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
                     "tools/train.py", *args], **kw)


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def copy_samples(raws: list[dict], dst: Path, answer_vocab: list[str]) -> None:
    """Raw samples (as ``read_shard`` yields them) into a shard dir, in this order."""
    with ShardSink(dst, "test copy", answer_vocab=answer_vocab) as sink:
        for raw in raws:
            sink.add(raw["__key__"], json.loads(raw["json"]), raw["png"], "png")


def raw_samples(src: Path) -> tuple[list[dict], list[str]]:
    shards, infos = resolve_shards([str(src)])
    return [r for s in shards for r in read_shard(s.url, 0, s.samples)], infos[0].answer_vocab


def rank_major_copy(src: Path, dst: Path, batch: int, world: int) -> None:
    """Rewrite ``src``'s samples so that ``world`` ranks of batch ``batch`` (no shuffling; rank r reads
    the r-th contiguous range) see, at every step, exactly the samples one process with batch
    ``world * batch`` sees: global batch g = the concatenation of the ranks' g-th batches."""
    raws, answers = raw_samples(src)
    global_batch = world * batch
    steps = len(raws) // global_batch
    order = [g * global_batch + r * batch + i for r in range(world) for g in range(steps) for i in range(batch)]
    copy_samples([raws[i] for i in order], dst, answers)


# -------------------------------------------------------------------------- DDP == single process


@pytest.mark.slow
@pytest.mark.matrix
def test_torchrun_two_ranks_equals_one_process_with_the_doubled_batch(assets, tmp_path):
    # no shuffling, no dropout (each rank draws its own dropout masks)
    shuffled_off = {"data.shuffle": False, "data.val": [], "train.steps": 3, "model.config": NO_DROPOUT}
    single = base_config(assets, tmp_path / "single", **shuffled_off, **{"data.batch_size": 8})
    train(job_of(single, tmp_path))

    rank_major_copy(assets["data"] / "train", tmp_path / "train-2ranks", batch=4, world=2)
    ddp = base_config(assets, tmp_path / "ddp", **shuffled_off, **{"data.train": [str(tmp_path / "train-2ranks")]})
    proc = torchrun(["--config", str(write_config(ddp, tmp_path / "ddp.yaml"))])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "single"), weights(tmp_path / "ddp"), atol=2e-5)
    parts = ("loss", "loss_vqa", "loss_l1", "loss_giou")
    single_log = [[m[k] for k in parts] for m in read_metrics(tmp_path / "single" / "metrics.jsonl") if m["split"] == "train"]
    ddp_log = [[m[k] for k in parts] for m in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if m["split"] == "train"]
    assert np.array(single_log) == pytest.approx(np.array(ddp_log), rel=1e-5)  # the loss's parts too
    for loss, vqa, l1, giou in single_log:  # loss = VQA + 5 L1 + 2 GIoU (the default box weights)
        assert loss == pytest.approx(vqa + 5 * l1 + 2 * giou, rel=1e-5)


@pytest.fixture(scope="module")
def single_task_dirs(assets):
    """The CLEVR-lite train split as two single-task sources: VQA rows only, grounding rows only (what a
    user combining VQA v2 with RefCOCO has)."""
    raws, answers = raw_samples(assets["data"] / "train")
    dirs = {}
    for task in ("vqa", "ground"):
        dirs[task] = assets["root"] / f"train-{task}"
        if not dirs[task].exists():
            copy_samples([r for r in raws if json.loads(r["json"])["task"] == task], dirs[task], answers)
    return dirs


@pytest.mark.slow
def test_torchrun_over_two_single_task_sources_mixes_them_resumes_exactly_and_equals_one_process(
        assets, single_task_dirs, minilm_tokenizer, tmp_path):
    """Two ranks over a VQA dir and a grounding dir, weighted 1:1: every step has rows of both tasks (logged
    per step), a run resumed from its step-2 checkpoint ends equal to the straight one, and the 2-rank run
    equals one process with the doubled batch fed the same samples (the two ranks' batches, step by step)."""
    steps, sources = 4, [{"source": str(single_task_dirs[t]), "weight": 1.0} for t in ("vqa", "ground")]
    over = {"data.train": sources, "data.val": [], "train.steps": steps, "train.save_every": 2, "model.config": NO_DROPOUT}
    ddp = base_config(assets, tmp_path / "ddp", **over)
    cfg = write_config(ddp, tmp_path / "ddp.yaml")
    proc = torchrun(["--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [m for m in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if m["split"] == "train"]
    assert [m["step"] for m in log] == list(range(1, steps + 1))
    assert all(m["rows/vqa"] > 0 and m["rows/ground"] > 0 and m["rows/vqa"] + m["rows/ground"] == 8 for m in log)

    # resume: the step-2 checkpoint, continued in another run dir, ends where the straight run ended
    resumed = base_config(assets, tmp_path / "resumed", **over)
    proc = torchrun(["--config", str(write_config(resumed, tmp_path / "resumed.yaml")),
                     "--resume", str(tmp_path / "ddp" / "checkpoints" / "step-00000002")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "resumed"), atol=1e-6)

    # one process, batch 8 = rank 0's batch g + rank 1's batch g, in shard order
    loaders = [build_loader([str(single_task_dirs[t]) for t in ("vqa", "ground")],
                            processor_for(minilm_tokenizer, 64, 24),
                            LoaderConfig(batch_size=4, shuffle_buffer=16), weights=[1.0, 1.0], rank=r,
                            world_size=2, seed=0)
               for r in range(2)]
    streams = [iter(loader) for loader in loaders]
    by_key = {r["__key__"]: r for t in ("vqa", "ground") for r in raw_samples(single_task_dirs[t])[0]}
    order = [key for _ in range(steps) for stream in streams for key in next(stream)["keys"]]
    copy_samples([by_key[k] for k in order], tmp_path / "replay", raw_samples(single_task_dirs["vqa"])[1])
    single = base_config(assets, tmp_path / "single", **{**over, "data.train": [str(tmp_path / "replay")],
                                                          "data.shuffle": False, "data.batch_size": 8})
    train(job_of(single, tmp_path))
    assert_same_weights(weights(tmp_path / "single"), weights(tmp_path / "ddp"), atol=2e-5)


@pytest.mark.slow
@pytest.mark.matrix
def test_fsdp_equals_ddp_evaluates_in_lockstep_and_resumes_exactly_from_its_sharded_checkpoint(assets, tmp_path):
    """run.parallel=fsdp (FSDP2 fully_shard, 2 gloo ranks): after 3 steps the parameters and the val metrics
    equal DDP's (the eval batch size gives rank 0 one batch more than rank 1, so the sharded forwards must
    run in lockstep) and both score every val sample exactly once; step 2's sharded (DCP) checkpoint
    resumes to the uninterrupted run's weights on 2 ranks, and to its exact state in one process."""
    val = sum(s.samples for s in resolve_shards([str(assets["data"] / "val")])[0])
    common = {"data.shuffle": False, "data.eval_batch_size": val // 2 - (val % 2 == 0), "train.steps": 3,
              "model.config": {"coattention_config": {"num_layers": 1, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
                               "vision_config": {"out_indices": [-2]}}}
    fsdp_only = {"run.parallel": "fsdp", "train.save_every": 2}
    for name, over in (("ddp", {}), ("fsdp", fsdp_only)):
        cfg = base_config(assets, tmp_path / name, **common, **over)
        proc = torchrun(["--config", str(write_config(cfg, tmp_path / f"{name}.yaml"))])
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "ddp"), weights(tmp_path / "fsdp"), atol=2e-5)
    final = {name: json.loads((tmp_path / name / "final_metrics.json").read_text())["val"] for name in ("ddp", "fsdp")}
    assert final["fsdp"] == pytest.approx(final["ddp"], rel=1e-4, abs=1e-5)
    val_keys = sorted(r["__key__"] for r in raw_samples(assets["data"] / "val")[0])
    for name in ("ddp", "fsdp"):  # the two ranks' unequal shares of val: every sample scored exactly once
        rows = (tmp_path / name / "predictions" / "val.jsonl").read_text().splitlines()
        assert sorted(json.loads(row)["key"] for row in rows) == val_keys, name

    step2 = tmp_path / "fsdp" / "checkpoints" / "step-00000002"
    assert (step2 / "sharded").is_dir() and (step2 / "model" / "model.safetensors").is_file()
    assert "optimizer" not in torch.load(step2 / "trainer.pt", weights_only=True)  # it is in the shards
    resumed = base_config(assets, tmp_path / "resumed", **common, **fsdp_only)
    proc = torchrun(["--config", str(write_config(resumed, tmp_path / "resumed.yaml")), "--resume", str(step2)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "fsdp"), weights(tmp_path / "resumed"), atol=1e-6)

    # another world size: one process (unsharded) resumes the 2-rank shards, and the checkpoint it writes
    # at that same step holds the sharded checkpoint's weights and optimizer state
    one = base_config(assets, tmp_path / "one", **{**common, "data.val": [], "train.steps": 2})
    train(job_of(one, tmp_path), resume=str(step2))
    assert_same_checkpoint_state(step2, tmp_path / "one" / "checkpoints" / "step-00000002", tmp_path)


@pytest.mark.slow
def test_a_one_rank_checkpoint_continues_on_two_ranks(assets, tmp_path):
    """torchrun elastic: a job checkpointed by one process resumes on two (model, optimizer, schedule and
    step restored: the weights and optimizer state at resume are the checkpoint's, bit for bit; the data
    stream continues from the global sample count). FSDP refuses that checkpoint with one clear error."""
    over = {"data.val": [], "train.steps": 4, "train.save_every": 2}
    train(job_of(base_config(assets, tmp_path / "one", **over), tmp_path))
    cfg = write_config(base_config(assets, tmp_path / "two", **over), tmp_path / "two.yaml")
    proc = torchrun(["--config", str(cfg), "--resume", str(tmp_path / "one" / "checkpoints" / "step-00000002")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming a checkpoint of 1 process(es) on 2" in proc.stderr
    log = {m["step"]: m for m in read_metrics(tmp_path / "two" / "metrics.jsonl") if m["split"] == "train"}
    straight = {m["step"]: m for m in read_metrics(tmp_path / "one" / "metrics.jsonl") if m["split"] == "train"}
    assert sorted(log) == [3, 4]
    assert [log[s]["lr"] for s in (3, 4)] == pytest.approx([straight[s]["lr"] for s in (3, 4)])  # schedule went on
    assert all(log[s]["epoch"] >= straight[2]["epoch"] for s in (3, 4))
    assert (tmp_path / "two" / "final" / "model.safetensors").is_file()

    # what the two ranks hold at resume: run to the checkpoint's own step, the checkpoint they write there
    # has the one-process checkpoint's weights and optimizer state
    step2 = tmp_path / "one" / "checkpoints" / "step-00000002"
    at_resume = write_config(base_config(assets, tmp_path / "at-resume", **{**over, "train.steps": 2}),
                             tmp_path / "at-resume.yaml")
    proc = torchrun(["--config", str(at_resume), "--resume", str(step2)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_checkpoint_state(step2, tmp_path / "at-resume" / "checkpoints" / "step-00000002", tmp_path)

    # FSDP cannot take a replicated checkpoint (its optimizer state is not sharded): one clear error
    fsdp = write_config(base_config(assets, tmp_path / "fsdp", **over, **{"run.parallel": "fsdp"}),
                        tmp_path / "fsdp.yaml")
    proc = torchrun(["--config", str(fsdp), "--resume", str(step2)])
    assert proc.returncode != 0 and not (tmp_path / "fsdp" / "final").exists()
    assert (f"train.py: error: {step2} was written with run.parallel=ddp (its optimizer state is not sharded); "
            "resume it with run.parallel=ddp") in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_simulated_nodes_without_a_shared_cache_each_convert_the_text_encoder(assets, tmp_path):
    """`--nnodes=2` on localhost, one process per node, each node with its own cache dir (as two machines
    without a shared filesystem): each node's local rank 0 converts MiniLM into its own cache."""
    run = base_config(assets, tmp_path / "run", **{"data.val": [], "train.steps": 2, "model.text": None,
                                                    "model.convert_from": "minilm", "model.shared_key_dim": None})
    cfg = write_config(run, tmp_path / "run.yaml")
    port = free_port()
    nodes = []
    for node in range(2):
        env = {**ENV, "VLCOATTN_CACHE": str(tmp_path / f"cache-node{node}")}
        nodes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
             "tools/train.py", "--config", str(cfg)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = [proc.communicate(timeout=600)[1] for proc in nodes]
    for node, proc in enumerate(nodes):
        assert proc.returncode == 0, f"node {node}: " + errors[node][-3000:] + f"\nnode {1 - node}: " + errors[1 - node][-1500:]
    for node in range(2):
        assert (tmp_path / f"cache-node{node}" / "coobert-model-kfull" / "config.json").is_file()
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


# -------------------------------------------------------------------------- resume == uninterrupted


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m["split"] == "train" and m["step"] >= step for m in read_metrics(run_dir / "metrics.jsonl")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [pytest.param(0, marks=pytest.mark.matrix), 2])
def test_sigterm_then_resume_latest_equals_the_uninterrupted_run(assets, tmp_path, workers):
    """Dropout on, shuffling on, several loader workers: only an exact restore of the model, optimizer,
    scheduler, RNG and every worker's data position can reproduce the straight run. With workers the
    signal goes to the whole process group, as a Ctrl-C or a scheduler sends it: the workers must leave
    it to the trainer. The interrupted run is given far more steps than it can take, so the signal (sent
    once metrics.jsonl shows step 2) always finds it training; it is resumed for 3 more steps than it
    stopped at, and the straight run takes as many. The schedule is constant after its warmup, so a step's
    LR does not depend on the run's length (and the warmup makes a lost scheduler state show)."""
    over = {"data.num_workers": workers, "data.val": [], "train.save_every": 0, "optim.schedule": "constant",
            "optim.lr": 5e-3, "optim.warmup_steps": 20}
    cut = base_config(assets, tmp_path / "cut", **over, **{"train.steps": 1_000_000})
    cfg_path = write_config(cut, tmp_path / "cut.yaml")
    proc = subprocess.Popen([sys.executable, "tools/train.py", "--config", str(cfg_path)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_step(tmp_path / "cut", 2, proc)
    if workers:
        os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its loader workers
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by a signal at step" in err
    stopped_at = int(err.split("stopped by a signal at step ")[1].split(";")[0])
    assert stopped_at >= 2 and not (tmp_path / "cut" / "final").exists()

    steps = stopped_at + 3
    proc = run_tool(["tools/train.py", "--config", str(cfg_path), "--resume", "latest", f"train.steps={steps}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(job_of(base_config(assets, tmp_path / "straight", **over, **{"train.steps": steps}), tmp_path))
    assert_same_weights(weights(tmp_path / "straight"), weights(tmp_path / "cut"), atol=1e-6)
    losses = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "cut" / "metrics.jsonl") if m["split"] == "train"}
    want = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "straight" / "metrics.jsonl") if m["split"] == "train"}
    assert sorted(losses) == list(range(1, steps + 1))
    assert [losses[s] for s in sorted(losses)] == pytest.approx([want[s] for s in sorted(want)], rel=1e-6)


# -------------------------------------------------------------------------- non-finite losses


class _NaNAt:
    """Wraps forward so that the loss is NaN on chosen calls (counted over training forwards). The wrapper
    keeps forward's signature (``functools.wraps``), so the trainer still passes ``num_items_in_batch``
    as in production."""

    def __init__(self, model, bad_calls):
        self.model, self.bad, self.calls = model, set(bad_calls), 0
        self.forward = model.forward
        functools.update_wrapper(self, model.forward)

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        if self.model.training:
            self.calls += 1
            if self.calls in self.bad:
                out.loss = out.loss * float("nan")
        return out


def _tiny_model(assets, tmp_path, run_dir, **over):
    job = job_of(base_config(assets, run_dir, **{"data.val": [], **over}), tmp_path)
    from vlcoattn.train.build import build_model
    from vlcoattn.train.trainer import data_vocabularies

    answers, labels, _ = data_vocabularies(job.data.train_sources)
    torch.manual_seed(0)
    return job, *build_model(job, answers, labels)


def test_a_nan_loss_skips_the_update_and_is_counted(assets, tmp_path):
    job, model, tokenizer = _tiny_model(assets, tmp_path, tmp_path / "nan", **{"train.steps": 3})
    model.forward = _NaNAt(model, {2})
    trainer = Trainer(job, model, tokenizer)
    assert trainer.counts_items  # the production path: losses normalised by num_items_in_batch
    after_step = {}
    train_step = trainer._train_step

    def recording_step(batches):
        result = train_step(batches)
        after_step[trainer.step] = {k: v.clone() for k, v in model.state_dict().items()}
        return result

    trainer._train_step = recording_step
    result = trainer.fit()
    assert result.skipped_steps == 1 and result.step == 3
    train_log = [m for m in read_metrics(tmp_path / "nan" / "metrics.jsonl") if m["split"] == "train"]
    assert [m["skipped_steps"] for m in train_log] == [0, 1, 1]
    assert_same_weights(after_step[1], after_step[2], atol=0.0)  # the NaN step changed nothing
    changed = [k for k in after_step[2] if not torch.equal(after_step[2][k], after_step[3][k])]
    assert changed, "step 3 must update the weights again"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_nan_losses_in_a_row_stop_with_a_clear_message(assets, tmp_path):
    job, model, tokenizer = _tiny_model(assets, tmp_path, tmp_path / "nan2", **{"train.steps": 6, "train.max_bad_steps": 2})
    model.forward = _NaNAt(model, {2, 3})
    with pytest.raises(TrainingError, match="2 steps in a row had a non-finite loss"):
        Trainer(job, model, tokenizer).fit()


def test_stop_when_ends_the_run_at_the_first_validation_that_reaches_its_targets(assets, tmp_path):
    over = {"train.steps": 6, "train.eval_every": 2, "train.stop_when": {"acc@0.5": 0.0, "vqa_acc": 0.0}}
    result = train(job_of(base_config(assets, tmp_path / "stop", **over), tmp_path))
    assert result.step == 2 and not result.interrupted and (tmp_path / "stop" / "final" / "model.safetensors").is_file()
    val = [m["step"] for m in read_metrics(tmp_path / "stop" / "metrics.jsonl") if m["split"] == "val"]
    assert val == [2, 2]  # the stopping validation, then the end-of-run one of the saved model
    never = {**over, "train.stop_when": {"acc@0.5": 2.0}}  # Acc@0.5 never exceeds 1: all the steps
    assert train(job_of(base_config(assets, tmp_path / "all", **never), tmp_path)).step == 6
    with pytest.raises(ValueError, match=r"train.stop_when names \['acc@05'\], which validation does not report"):
        train(job_of(base_config(assets, tmp_path / "typo", **{**over, "train.stop_when": {"acc@05": 0.5}}), tmp_path))
    with pytest.raises(ValueError, match=r"train\.stop_when needs validation during training"):
        job_of(base_config(assets, tmp_path / "noval", **{**over, "train.eval_every": 0}), tmp_path)


# -------------------------------------------------------------------------- evaluate.py, report, configs


def test_evaluate_cli_reproduces_the_end_of_training_metrics_and_the_report_is_written(assets, tmp_path):
    run = base_config(assets, tmp_path / "run", **{"train.steps": 2, "train.report": True, "train.report_images": 4,
                                                     "data.test": {"test": [str(assets["data"] / "test")]}})
    result = train(job_of(run, tmp_path))
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final == result.metrics and {"val", "test"} <= final.keys()
    assert {"vqa_acc", "acc@0.5", "mean_iou", "loss"} <= final["val"].keys()
    proc = run_tool(["tools/evaluate.py", "--model", str(tmp_path / "run" / "final"), "--data",
                     str(assets["data"] / "test"), "--no-progress", "--predictions", str(tmp_path / "p.jsonl")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    reproduced = json.loads(proc.stdout)
    baselines = ("center_box/", "answer_prior/", "question_prior/")
    assert reproduced == pytest.approx({k: v for k, v in final["test"].items() if not k.startswith(baselines)}, rel=1e-5)
    for split in ("val", "test"):  # the image-blind VQA baselines, fitted on train, scored on the same samples
        assert 0 <= final[split]["answer_prior/vqa_acc"] <= final[split]["question_prior/vqa_acc"] <= 1
    preds = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    ground = [p for p in preds if p["task"] == "ground"]
    assert ground and all(len(p["box"]) == 4 and 0 <= p["iou"] <= 1 for p in ground)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "acc@0.5" in report and "vqa_acc" in report
    assert "| model | answer prior | question prior | center box |" in report
    for png in ("curves.png", "predictions.png"):
        assert (tmp_path / "run" / png).stat().st_size > 5000
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_the_saved_processor_gives_the_evaluation_inputs_bit_for_bit_and_the_same_outputs_everywhere(assets, tmp_path):
    """final/ reloaded with AutoProcessor + the model class: the evaluation loader's inputs exactly, and the
    same answers and boxes from the evaluation pass, Predictor and the two pipelines."""
    train(job_of(base_config(assets, tmp_path / "run", **{"train.steps": 2, "data.val": []}), tmp_path))
    final = tmp_path / "run" / "final"
    processor = AutoProcessor.from_pretrained(final)
    assert isinstance(processor, VLCoAttnProcessor) and processor.max_text_len == 24
    assert isinstance(AutoImageProcessor.from_pretrained(final), VLCoAttnImageProcessor)
    model = VLCoAttnForMultitask.from_pretrained(final).eval()
    vocab = model.config.answer_vocab
    raws = raw_samples(assets["data"] / "val")[0][:6]
    loader = build_eval_loader(str(assets["data"] / "val"), processor, batch_size=1, limit=len(raws))
    result = evaluate(model, loader, "vqa+ground")
    predictor = Predictor.from_pretrained(final)
    vqa, ground = (pipeline(task, model=str(final)) for task in ("vlcoattn-vqa", "vlcoattn-grounding"))
    for raw, batch, row in zip(raws, loader, result.predictions, strict=True):
        assert batch["keys"][0] == raw["__key__"] == row["key"]
        text = batch["texts"][0]
        inputs = processor(images=raw["png"], text=text)
        for key in ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "letterbox"):
            assert torch.equal(inputs[key], batch[key]), key
        with torch.no_grad():
            out = model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")})
        probs = out.logits[0].sigmoid()
        box = processor.post_process_grounding(out, letterbox=inputs["letterbox"])[0]["box"]
        pred = predictor.predict(raw["png"], text, top_k=len(vocab))
        assert pred["answers"] == [{"answer": vocab[i], "probability": round(float(probs[i]), 6)}
                                   for i in probs.argsort(descending=True, stable=True).tolist()]
        assert pred["box"] == [round(v, 2) for v in box.tolist()]
        assert vqa(raw["png"], text, top_k=3) == [{"answer": a["answer"], "score": a["probability"]}
                                                  for a in pred["answers"][:3]]
        assert ground(raw["png"], text)["box"] == pred["box"]
        if batch["tasks"][0] == "vqa":
            assert row["answer"] == pred["answers"][0]["answer"]
        else:
            assert row["box"] == pred["box"]
    # the pipelines' own batching gives what one input at a time gives
    items = [{"image": raw["png"], "text": json.loads(raw["json"])["text"]} for raw in raws]
    assert vqa(items, batch_size=4, top_k=2) == [vqa(item, top_k=2) for item in items]
    heatmaps = ground(items[0])["heatmaps"]
    assert heatmaps and all(abs(float(h["heatmap"].sum()) - 1) < 1e-4 for h in heatmaps)


def _first_losses(assets, tmp_path, name, **over) -> list[float]:
    run = base_config(assets, tmp_path / name, **{"data.val": [], "train.steps": 2, **over})
    result = train(job_of(run, tmp_path))
    assert result.step == 2 and (tmp_path / name / "final" / "model.safetensors").is_file()
    return [m["loss"] for m in read_metrics(tmp_path / name / "metrics.jsonl") if m["split"] == "train"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_on_cpu_near_fp32(assets, tmp_path, precision):
    """Autocast on the CPU (bf16; fp16 with its gradient scaler): the first loss is within 3% of fp32's
    (same weights and batch; bf16 keeps 8 bits of mantissa), every loss is finite, the run saves."""
    fp32 = _first_losses(assets, tmp_path, "fp32", **{"run.precision": "fp32"})
    low = _first_losses(assets, tmp_path, precision, **{"run.precision": precision})
    assert low[0] == pytest.approx(fp32[0], rel=0.03) and all(math.isfinite(x) for x in low)


def test_gradient_accumulation_equals_the_doubled_batch(assets, tmp_path):
    """optim.accum_steps=2 at data.batch_size=4 takes the steps data.batch_size=8 takes: without shuffling
    both read the same 8 samples a step, VQA and grounding rows mixed, and each loss is normalised over
    the whole step's items (not per micro-batch), so the losses, their parts and the weights agree."""
    fixed = {"data.shuffle": False, "data.val": [], "train.steps": 3, "model.config": NO_DROPOUT}
    train(job_of(base_config(assets, tmp_path / "big", **fixed, **{"data.batch_size": 8}), tmp_path))
    train(job_of(base_config(assets, tmp_path / "accum", **fixed, **{"data.batch_size": 4, "optim.accum_steps": 2}),
                 tmp_path))
    parts = ("loss", "loss_vqa", "loss_l1", "loss_giou")
    logs = {name: [m for m in read_metrics(tmp_path / name / "metrics.jsonl") if m["split"] == "train"]
            for name in ("big", "accum")}
    assert len(logs["accum"]) == 3 and all(m["rows/vqa"] > 0 and m["rows/ground"] > 0 for m in logs["accum"])
    assert np.array([[m[k] for k in parts] for m in logs["accum"]]) == pytest.approx(
        np.array([[m[k] for k in parts] for m in logs["big"]]), rel=1e-5)
    assert_same_weights(weights(tmp_path / "big"), weights(tmp_path / "accum"), atol=2e-5)


def test_gradient_checkpointing_in_the_trainer_changes_no_weight(assets, tmp_path):
    plain = _first_losses(assets, tmp_path, "plain")
    recomputed = _first_losses(assets, tmp_path, "ckpt", **{"model.gradient_checkpointing": True})
    assert recomputed == pytest.approx(plain, rel=1e-6)
    assert_same_weights(weights(tmp_path / "plain"), weights(tmp_path / "ckpt"), atol=1e-6)


def test_the_feature_cache_trains_like_recomputing_and_logs_its_use(assets, tmp_path):
    """model.feature_cache_gib with the text encoder and the backbone frozen: the same losses to float
    rounding, and the cache's hits and misses in metrics.jsonl."""
    frozen = {"model.config": {"coattention_config": {"num_layers": 1}, "freeze_text_layers": -1,
                               "vision_config": {"out_indices": [-2], "freeze": True}}}
    plain = _first_losses(assets, tmp_path, "plain", **frozen)
    cached = _first_losses(assets, tmp_path, "cached", **frozen, **{"model.feature_cache_gib": 0.5})
    assert cached == pytest.approx(plain, rel=1e-4)
    last = [m for m in read_metrics(tmp_path / "cached" / "metrics.jsonl") if m["split"] == "train"][-1]
    assert last["feature_cache_misses"] > 0 and last["feature_cache_hits"] + last["feature_cache_misses"] == 2 * 2 * 4  # 2 steps of 4 texts + 4 images
    for over, message in [({"model.feature_cache_gib": -1}, "feature_cache_gib must be >= 0"),
                          ({"model.feature_cache_gib": 1, "run.parallel": "fsdp"}, "run.parallel=fsdp")]:
        with pytest.raises(ValueError, match=message):
            job_of(base_config(assets, tmp_path / "bad", **over), tmp_path)


def test_compiled_layers_train_like_eager(assets, tmp_path):
    """run.compile: every transformer layer and backbone stage through torch.compile (inductor, on the CPU
    too); the losses match eager's to float rounding and the saved weights keep their names."""
    no_dropout = {"model.config": NO_DROPOUT}  # compiled dropout draws other masks
    eager = _first_losses(assets, tmp_path, "eager", **no_dropout)
    compiled = _first_losses(assets, tmp_path, "compiled", **no_dropout, **{"run.compile": True})
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert_same_weights(weights(tmp_path / "eager"), weights(tmp_path / "compiled"), atol=1e-4)


def test_data_samples_per_epoch_sets_the_epoch_length(assets, tmp_path):
    job, model, tokenizer = _tiny_model(assets, tmp_path, tmp_path / "spe", **{"data.samples_per_epoch": 12})
    assert len(Trainer(job, model, tokenizer).loader) == 12 // 4  # batches of 4 per epoch
    with pytest.raises(ValueError, match="samples_per_epoch must be > 0"):
        job_of(base_config(assets, tmp_path / "spe0", **{"data.samples_per_epoch": 0}), tmp_path)
    with pytest.raises(ValueError, match=r"color_jitter must be in \[0, 1\)"):
        job_of(base_config(assets, tmp_path / "cj", **{"data.color_jitter": 1.5}), tmp_path)


def test_bad_config_and_bad_cli_arguments_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: vqa\noptim:\n  lrr: 0.1\n")
    proc = run_tool(["tools/train.py", "--config", str(bad)])
    assert proc.returncode == 2 and "unknown config key 'optim.lrr'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool(["tools/train.py", "--config", "configs/demo.yaml", "train.steps=many"])
    assert proc.returncode == 2 and "train.steps" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool(["tools/train.py", "--config", "configs/demo.yaml", "task=detect"])
    assert proc.returncode == 2 and "task must be one of" in proc.stderr
    proc = run_tool(["tools/evaluate.py", "--model", str(tmp_path), "--data", str(tmp_path)])
    assert proc.returncode == 2 and "no config.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_builds_its_model(path, minilm_dir):
    """Each config validates and builds the model of its task from its own model section (the lm config's
    tokenizer, trained by a tool, is swapped for MiniLM's; vocabularies stand in for the data's)."""
    job = load_config(JobConfig, path, [f"model.tokenizer={minilm_dir}"] if "lm" in path.name else [])
    model, tokenizer = build_model(job, answer_vocab=["yes", "no", "2"], label_vocab=["a", "b", "c"])
    assert isinstance(model, job.spec.model_class_object()) and tokenizer.pad_token is not None
    assert sum(p.numel() for p in model.parameters()) > 1e6
    if job.spec.needs_images:
        prior = job.model.config.get("coattention_config", {}).get("spatial_prior", "gaussian")
        assert model.config.coattention_config.spatial_prior == prior
    if "vqa" in job.spec.sample_tasks:
        assert model.config.answer_vocab == ["yes", "no", "2"]


def test_lr_schedule_warmup_then_cosine_to_the_floor():
    from vlcoattn.train.job_config import OptimConfig
    from vlcoattn.train.optim import lr_factor

    cfg = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, 20, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 20, cfg) == pytest.approx(1.0)
    assert lr_factor(12, 20, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(20, 20, cfg) == pytest.approx(0.1)


def test_param_groups_no_decay_on_norms_and_biases_and_separate_backbone_lr(assets, tmp_path):
    from vlcoattn.train.optim import param_groups

    job, model, _ = _tiny_model(assets, tmp_path, tmp_path / "pg", **{"optim.backbone_lr": 1e-5})
    groups = {g["name"]: g for g in param_groups(model, job.optim)}
    assert groups["backbone"]["lr"] == 1e-5 and groups["head"]["lr"] == job.optim.lr
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)  # timm's LayerNorm2d too
    exempt = {id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters(recurse=False)}
    exempt |= {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
    assert any("backbone" in n and id(p) in exempt and not n.endswith("bias") for n, p in model.named_parameters())
    for g in groups.values():
        assert all((g["weight_decay"] == 0) == (id(p) in exempt) for p in g["params"]), g["name"]
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in model.parameters())


# -------------------------------------------------------------------------- the demo config learns


def test_more_synthetic_training_scenes_keep_the_same_evaluation_splits(tmp_path):
    """data.synthetic.val_scenes / test_scenes pin the evaluation splits: 30 training scenes with 3 + 3
    give the val, test and hold-out shards of 30 scenes' defaults byte for byte (ignoring tar mtimes)."""
    def shards(num_scenes: int, *extra: str) -> dict[str, list[tuple[str, bytes]]]:
        root = tmp_path / str(num_scenes)
        job = load_config(JobConfig, None, [f"data.synthetic.dir={root}", f"data.synthetic.num_scenes={num_scenes}",
                                            "run.progress=false", *extra])
        resolve_data(job)
        assert job.data.val == [str(root / "val")] and set(job.data.test) == {"test", "holdout"}
        members = {}
        for split in ("train", "val", "test", "holdout"):
            with tarfile.open(next((root / split).glob("*.tar"))) as tar:
                members[split] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        return members

    small, large = shards(30), shards(60, "data.synthetic.val_scenes=3", "data.synthetic.test_scenes=3")
    for split in ("val", "test", "holdout"):
        assert small[split] == large[split] and small[split]
    assert len(large["train"]) == 2 * len(small["train"])


@pytest.mark.slow
def test_a_short_demo_run_learns_the_loss_falls_and_boxes_beat_the_center_box(tmp_path):
    """configs/demo.yaml with the real pretrained parts (converted MiniLM, frozen; EfficientNet-Lite0),
    shrunk to 300 scenes and 200 steps (~2.5 min: the frozen text encoder makes steps ~1.7x faster than
    the 100 unfrozen steps this test used to run). On the held-out scenes (val, test and the compositional
    hold-out, ~60 boxes each) the boxes must beat the center-box baseline (a box of the mean training
    size at the image center): Acc@0.5 over the three splits, and mean IoU by 2x on each.
    Measured: Acc@0.5 0.217 / 0.283 / 0.217 vs 0 / 0 / 0, mean IoU 0.26-0.27 vs 0.007-0.022."""
    run = tmp_path / "demo"
    proc = run_tool(["tools/train.py", "--config", "configs/demo.yaml", f"run.dir={run}",
                     f"data.synthetic.dir={tmp_path / 'clevr'}", "data.synthetic.num_scenes=300", "train.steps=200",
                     "train.eval_every=0", "train.save_every=0", "optim.warmup_steps=20",
                     "run.progress=false", "train.report_images=4"],
                    timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [m["loss"] for m in read_metrics(run / "metrics.jsonl") if m["split"] == "train"]
    assert sum(losses[-2:]) / 2 < 0.7 * losses[0], losses
    final = json.loads((run / "final_metrics.json").read_text())
    splits = [final[s] for s in ("val", "test", "holdout")]
    for m in splits:
        assert m["mean_iou"] > 2 * m["center_box/mean_iou"], m
    assert sum(m["acc@0.5"] for m in splits) > sum(m["center_box/acc@0.5"] for m in splits) + 0.05, splits
    assert (run / "report.md").is_file() and (run / "final" / "model.safetensors").is_file()
