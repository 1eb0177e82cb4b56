"""The trainer: DDP == single process, resume == uninterrupted, NaN skipping, evaluate.py, configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlcoattn.data import ShardSink, write_synthetic
from vlcoattn.data.loader import read_shard
from vlcoattn.data.shards import resolve_shards
from vlcoattn.data.synthetic import SyntheticConfig
from vlcoattn.text import CooBertConfig, CooBertModel
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.metrics_log import read_metrics
from vlcoattn.train.trainer import Trainer, TrainingError, train

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


def base_config(assets, run_dir, **over) -> dict:
    """A tiny vqa+ground job: LayerNorm-only backbone (convnext_atto; BatchNorm statistics would differ
    between a 2-rank and a 1-rank batch), one fusion layer."""
    cfg = {
        "task": "vqa+ground",
        "run": {"dir": str(run_dir), "seed": 0, "log_every": 1, "progress": False},
        "model": {"text": str(assets["text"]), "convert_from": None, "backbone": "convnext_atto",
                  "pretrained_backbone": False, "image_size": 64,
                  "config": {"fusion_num_layers": 1, "backbone_out_indices": [-2]}},
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


def run_tool(args: list[str], timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


def rank_major_copy(src: Path, dst: Path, batch: int, world: int) -> None:
    """Rewrite ``src``'s samples so that ``world`` ranks of batch ``batch`` (no shuffling; rank r reads
    the r-th contiguous range) see, at every step, exactly the samples one process with batch
    ``world * batch`` sees: global batch g = the concatenation of the ranks' g-th batches."""
    shards, infos = resolve_shards([str(src)])
    raws = [r for s in shards for r in read_shard(s.url, 0, s.samples)]
    global_batch = world * batch
    steps = len(raws) // global_batch
    order = [g * global_batch + r * batch + i for r in range(world) for g in range(steps) for i in range(batch)]
    with ShardSink(dst, "rank-major copy", answer_vocab=infos[0].answer_vocab) as sink:
        for i in order:
            raw = raws[i]
            sink.add(raw["__key__"], json.loads(raw["json"]), raw["png"], "png")


# -------------------------------------------------------------------------- DDP == single process


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process_with_the_doubled_batch(assets, tmp_path):
    # no shuffling, no dropout (each rank draws its own dropout masks)
    shuffled_off = {"data.shuffle": False, "data.val": [], "train.steps": 3, "model.config": {
        "fusion_num_layers": 1, "backbone_out_indices": [-2], "fusion_dropout": 0.0,
        "fusion_attention_dropout": 0.0}}
    single = base_config(assets, tmp_path / "single", **shuffled_off, **{"data.batch_size": 8})
    train(job_of(single, tmp_path))

    rank_major_copy(assets["data"] / "train", tmp_path / "train-2ranks", batch=4, world=2)
    ddp = base_config(assets, tmp_path / "ddp", **shuffled_off, **{"data.train": [str(tmp_path / "train-2ranks")]})
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(ddp))
    proc = run_tool(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731",
                     "tools/train.py", "--config", str(cfg_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(weights(tmp_path / "single"), weights(tmp_path / "ddp"), atol=2e-5)
    single_log = [m["loss"] for m in read_metrics(tmp_path / "single" / "metrics.jsonl") if m["split"] == "train"]
    ddp_log = [m["loss"] for m in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if m["split"] == "train"]
    assert single_log == pytest.approx(ddp_log, rel=1e-5)
