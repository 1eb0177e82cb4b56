"""The trainer's data settings and how a data failure ends a run: every loader option is a ``data.*`` key
that reaches the loader, a bad value is one clear error, and a stop of the bad-fraction check ends every
process (workers, ranks) with the check's own message and a non-zero exit."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import test_trainer
import torch
from test_trainer import ENV, ROOT, base_config, free_port, raw_samples, write_config

from vlcoattn.data import LoaderConfig, ShardSink
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import Trainer
from vlcoattn.utils.cli import error_line, run_cli

assets = test_trainer.assets  # the trainer tests' tiny CooBERT + CLEVR-lite (a module fixture)

# a value other than the default for every loader option
OPTIONS = {
    "batch_size": 3,
    "num_workers": 1,
    "prefetch_factor": 3,
    "shuffle": False,
    "shuffle_buffer": 7,
    "samples_per_epoch": 60,
    "max_bad_fraction": 0.5,
    "bad_check_after": 11,
    "augment": True,
    "color_jitter": 0.1,
    "crop_min_scale": 0.8,
}


def test_the_options_cover_every_loader_field_with_a_non_default_value():
    defaults = LoaderConfig()
    assert set(OPTIONS) == {f.name for f in dataclasses.fields(LoaderConfig)}
    assert all(OPTIONS[name] != getattr(defaults, name) for name in OPTIONS)


@pytest.mark.parametrize("how", ["yaml", "override"])
def test_every_loader_option_is_a_data_key_that_reaches_the_loader(assets, tmp_path, how):
    cfg = base_config(assets, tmp_path / "run")
    if how == "yaml":
        cfg["data"].update(OPTIONS)
        job = load_config(JobConfig, write_config(cfg, tmp_path / "job.yaml"))
    else:
        overrides = [f"data.{k}={json.dumps(v)}" for k, v in OPTIONS.items()]
        job = load_config(JobConfig, write_config(cfg, tmp_path / "job.yaml"), overrides)
    loader = Trainer(job).loader
    assert {name: getattr(loader.cfg, name) for name in OPTIONS} == OPTIONS
    transform = loader.decoder.transform  # built once by the trainer from data.augment / color_jitter / crop_min_scale
    assert (transform.augment, transform.jitter, transform.crop_min_scale) == (True, 0.1, 0.8)
    assert len(loader) == 60 // 3 and loader.workers == 1  # samples_per_epoch / batch_size batches, one stream


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0, got -1"),
        ("data.prefetch_factor=0", "data.prefetch_factor must be >= 1, got 0"),
        ("data.shuffle_buffer=0", "data.shuffle_buffer must be >= 1, got 0"),
        ("data.samples_per_epoch=0", "data.samples_per_epoch must be > 0 (or null: one pass over all sources), got 0"),
        ("data.max_bad_fraction=1.5", "data.max_bad_fraction must be in [0, 1], got 1.5"),
        ("data.bad_check_after=0", "data.bad_check_after must be >= 1, got 0"),
        ("data.color_jitter=1.0", "data.color_jitter must be in [0, 1), got 1.0"),
        ("data.crop_min_scale=0", "data.crop_min_scale must be in (0, 1] (or null: no crop), got 0.0"),
        ("data.crop_min_scale=0.5", "data.crop_min_scale crops only with augment: true, set, got 0.5"),
        ("data.eval_batch_size=0", "data.eval_batch_size must be >= 1, got 0"),
        ("data.min_answer_count=0", "data.min_answer_count must be >= 1, got 0"),
    ],
)
def test_a_bad_data_option_is_one_error_naming_its_key(tmp_path, override, message):
    with pytest.raises(ValueError) as caught:
        load_config(JobConfig, None, ["data.train=[shards]", override])
    assert str(caught.value) == message


# -------------------------------------------------------------------------- a stop ends every process


def damaged_copy(assets: dict, dst: Path) -> Path:
    """The training split in shards of 30 samples, the first cut to a third of its bytes and the second
    overwritten by random bytes (its dataset.json still declares them)."""
    raws, answers = raw_samples(assets["data"] / "train")
    with ShardSink(dst, "damaged copy", shard_size=30, answer_vocab=answers) as sink:
        for raw in raws:
            sink.add(raw["__key__"], json.loads(raw["json"]), raw["png"], "png")
    tars = sorted(dst.glob("*.tar"))
    assert len(tars) >= 3
    os.truncate(tars[0], tars[0].stat().st_size // 3)
    tars[1].write_bytes(random.Random(0).randbytes(tars[1].stat().st_size))
    return dst


def run_to_the_end(args: list[str], timeout: int) -> tuple[int, str]:
    """(exit code, stderr) of a process in its own process group; fails if it (or any process it started:
    loader workers, ranks) is still running after ``timeout`` seconds, killing them all."""
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{args} still ran after {timeout} s")
    with pytest.raises(ProcessLookupError):  # nothing of its process group is left
        os.killpg(proc.pid, 0)
    return proc.returncode, err


STOP = ("train.py: error: ", "samples were bad (", "> max_bad_fraction=1.0%): ", "unreadable_shard=",
        "Fix the data (see the logged examples) or raise max_bad_fraction.")


def damaged_job(assets: dict, tmp_path: Path, workers: int) -> Path:
    cfg = base_config(assets, tmp_path / "run", **{"train.steps": 50, "data.val": [], "data.num_workers": workers,
                                                   "data.bad_check_after": 20})
    cfg["data"]["train"] = [str(damaged_copy(assets, tmp_path / "damaged"))]
    return write_config(cfg, tmp_path / "job.yaml")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_data_stop_in_a_worker_ends_training_with_its_message(assets, tmp_path, workers):
    code, err = run_to_the_end(["tools/train.py", "--config", str(damaged_job(assets, tmp_path, workers))], 300)
    last = err.strip().splitlines()[-1]
    assert code == 2, err[-3000:]
    assert last.startswith(STOP[0]) and all(part in last for part in STOP), last
    assert "DataLoader worker" not in err


@pytest.mark.slow
def test_a_data_stop_under_torchrun_ends_every_rank(assets, tmp_path):
    """Two ranks, one worker each: the rank whose check fires exits with its message; the other, waiting
    in a collective for it, fails too (gloo: its peer closed the connection); torchrun exits non-zero."""
    config = damaged_job(assets, tmp_path, 1)
    code, err = run_to_the_end(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                                "tools/train.py", "--config", str(config)], 400)
    assert code != 0
    stops = [line for line in err.splitlines() if line.startswith(STOP[0])]
    assert stops and all(all(part in line for part in STOP) for line in stops), err[-3000:]
    assert "DataLoader worker" not in err


def test_the_damaged_copy_reads_as_bad_samples(assets, tmp_path):
    """The damage is what the stop tests rely on: a readable remainder, and unreadable samples counted."""
    from vlcoattn.data.read.loader import read_shard
    from vlcoattn.data.read.shards import resolve_shards

    shards, _ = resolve_shards([str(damaged_copy(assets, tmp_path / "damaged"))])
    errors = [sum("__error__" in raw for raw in read_shard(s.url, 0, s.samples)) for s in shards]
    assert errors[1] == shards[1].samples and 0 < errors[0] < shards[0].samples and not any(errors[2:])


class _FailsInAWorker(torch.utils.data.IterableDataset):
    def __iter__(self):
        raise ValueError("the worker's own reason")
        yield


def test_the_cli_shows_the_cause_of_a_user_error_raised_in_a_dataloader_worker(capsys):
    """Any user error a worker raises (not only the loader's stops, which keep their message anyway) is
    shown by its own message, not by torch's "Caught ValueError in DataLoader worker process 0"."""

    def main(argv):
        for _ in torch.utils.data.DataLoader(_FailsInAWorker(), batch_size=None, num_workers=1):
            pass

    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(": error: the worker's own reason")
    assert error_line("Caught ValueError in DataLoader worker process 0.") == \
        "Caught ValueError in DataLoader worker process 0."  # no traceback to read: the line as it is
