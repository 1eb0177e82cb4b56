"""The streaming loader: sources, DDP x worker splitting, fixed epochs, order, resume, bad samples."""

from __future__ import annotations

import io
import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image
from transformers import AutoTokenizer

from vlcoattn.assets import minilm_dir
from vlcoattn.data import (
    BadDataError,
    LoaderConfig,
    ShardSink,
    SyntheticConfig,
    build_loader,
    resolve_shards,
    write_synthetic,
)
from vlcoattn.data.write.inspection import inspect_shards

from helpers import processor_for

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def _write_text_shards(folder, sizes, prefix="s"):
    """Shards of text-only cls samples written by plain webdataset (no dataset.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for shard, size in enumerate(sizes):
        with wds.TarWriter(str(folder / f"shard-{shard:06d}.tar")) as tar:
            for i in range(size):
                key = f"{prefix}{shard}-{i:03d}"
                tar.write(
                    {"__key__": key, "json": {"task": "cls", "text": f"sample {key}", "label": "ab"[i % 2]}}
                )
                keys.append(key)
    return f"{folder}/shard-{{000000..{len(sizes) - 1:06d}}}.tar", keys


def _jpeg(color=(10, 200, 30), size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _keys(loader, limit=None):
    """Keys of the next ``limit`` batches (default: the rest of the epoch); takes no extra batch."""
    return [k for batch in itertools.islice(loader, limit) for k in batch["keys"]]


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    write_synthetic(root, 10, seed=0, config=SyntheticConfig(image_size=48), shard_size=13, progress=False)
    return root


def test_plain_webdataset_shards_with_images_load(tmp_path, tokenizer):
    pattern = str(tmp_path / "plain-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=3, verbose=0) as sink:
        for i in range(7):
            record = {"task": "ground", "text": f"the box {i}", "boxes": [[4, 3, 20, 15]]}
            sink.write({"__key__": f"img{i}", "jpg": _jpeg(), "json": json.dumps(record).encode()})
    loader = build_loader(str(tmp_path / "plain-{000000..000002}.tar"), processor_for(tokenizer, 32),
                          LoaderConfig(batch_size=7, shuffle=False))
    (batch,) = list(loader)
    assert batch["keys"] == [f"img{i}" for i in range(7)]
    assert batch["pixel_values"].shape == (7, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["token_type_ids"].shape
    assert batch["boxes"].shape == (7, 4) and batch["box_mask"].all()
    # letterbox of a 40x30 image into 32x32: scale 0.8, 4 px of padding top and bottom
    assert torch.allclose(batch["boxes"][0], torch.tensor([12 * 0.8 / 32, (9 * 0.8 + 4) / 32, 0.4, 0.3]))
    mean_green = batch["pixel_values"][0, 1, 16, 16].item()
    assert mean_green == pytest.approx((200 / 255 - 0.5) / 0.5, abs=0.05)


def test_remote_shards_are_read_once_for_their_count_and_vocabularies(synthetic_dir, tmp_path):
    """A pipe: source has no dataset.json: one read gives its sample count, tasks and answers (cached),
    so VQA training on it has an answer vocabulary; data.answer_vocab files and min counts override."""
    from vlcoattn.data import DatasetInfo, read_answer_vocab, scan_shard
    from vlcoattn.train.trainer import data_vocabularies

    info = DatasetInfo.load(synthetic_dir / "train")
    shard = synthetic_dir / "train" / info.shards[0]["file"]
    pipe = f"pipe:cat {shard}"
    scan_shard.cache_clear()
    shards, infos = resolve_shards([pipe])
    assert shards[0].samples == info.shards[0]["samples"] and sum(infos[0].tasks.values()) == shards[0].samples
    seen = {a for a, c in zip(info.answer_vocab, info.answer_counts) if c}
    answers, _, tasks = data_vocabularies([pipe])
    assert seen >= set(answers) and answers and {"vqa", "ground"} <= set(tasks)
    resolve_shards([pipe])
    assert scan_shard.cache_info().misses == 1  # read once, whatever asks
    # a vocabulary file (one answer per line or a JSON list) or a shard dir, with a minimum count
    (tmp_path / "answers.txt").write_text("red\nblue\n\nred\n")
    (tmp_path / "answers.json").write_text('["yes", "no"]')
    assert data_vocabularies([pipe], str(tmp_path / "answers.txt"))[0] == ["red", "blue"]
    assert read_answer_vocab(tmp_path / "answers.json") == ["yes", "no"]
    top = max(info.answer_counts)
    assert read_answer_vocab(synthetic_dir / "train", min_count=top) == \
        [a for a, c in zip(info.answer_vocab, info.answer_counts) if c >= top]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_answer_vocab(tmp_path / "missing.txt")


def test_pipe_urls_and_joined_sources(tmp_path, tokenizer):
    a, keys_a = _write_text_shards(tmp_path / "a", [4, 3], prefix="a")
    _b, keys_b = _write_text_shards(tmp_path / "b", [5], prefix="b")
    pipe = f"pipe:cat {tmp_path}/b/shard-000000.tar"
    joined = build_loader(f"{a}::{pipe}", tokenizer, LoaderConfig(batch_size=3, shuffle=False),
                          label_vocab=["a", "b"])
    assert len(joined) == 4
    assert _keys(joined) == keys_a + keys_b  # one source: its shards in order
    mixed = build_loader([a, pipe], tokenizer, LoaderConfig(batch_size=3, shuffle=False),
                         label_vocab=["a", "b"])
    assert len(mixed) == 4
    got = _keys(mixed)  # two sources: mixed, each read in its order, pass after pass
    from_a, from_b = [k for k in got if k[0] == "a"], [k for k in got if k[0] == "b"]
    assert from_a == (keys_a * 2)[: len(from_a)] and from_b == (keys_b * 3)[: len(from_b)]


@pytest.mark.parametrize("sizes", [[7, 3, 11, 5, 6], [7, 3, 11, 5, 7], [1, 1, 30]])
def test_two_ranks_two_workers_disjoint_cover_equal_counts(tmp_path, tokenizer, sizes):
    pattern, keys = _write_text_shards(tmp_path, sizes)
    seen, counts = [], []
    for rank in range(2):
        loader = build_loader(pattern, tokenizer, LoaderConfig(batch_size=2, num_workers=2, shuffle_buffer=4),
                              rank=rank, world_size=2, seed=5, label_vocab=["a", "b"])
        got = _keys(loader)
        seen.append(got)
        counts.append(len(loader))
        assert len(got) == len(loader) * 2 and len(set(got)) == len(got)
    assert counts[0] == counts[1] == len(keys) // 4
    assert not set(seen[0]) & set(seen[1])
    union = set(seen[0]) | set(seen[1])
    assert union <= set(keys) and len(union) == len(keys) // 4 * 4  # all but the < world*batch remainder


def test_fixed_epoch_length_continues_the_stream(tmp_path, tokenizer):
    pattern, keys = _write_text_shards(tmp_path, [9, 2, 13])
    loaders = [
        build_loader(pattern, tokenizer, LoaderConfig(batch_size=2, num_workers=2, samples_per_epoch=16),
                     rank=r, world_size=2, label_vocab=["a", "b"])
        for r in range(2)
    ]
    epochs = [[_keys(lo) for lo in loaders] for _ in range(3)]
    assert all(len(e[0]) == len(e[1]) == 8 for e in epochs)
    first_pass = [k for e in epochs[:1] for ranks in e for k in ranks] + epochs[1][0][:4] + epochs[1][1][:4]
    assert sorted(first_pass) == sorted(keys)  # epochs 0 + half of 1 are exactly one pass: no repeat, no skip
    assert [lo.epoch for lo in loaders] == [3, 3]


def test_same_seed_same_order(tmp_path, tokenizer):
    pattern, keys = _write_text_shards(tmp_path, [6, 6, 6, 6])

    def run(seed, workers):
        return _keys(
            build_loader(pattern, tokenizer, LoaderConfig(batch_size=3, num_workers=workers, shuffle_buffer=5),
                         seed=seed, label_vocab=["a", "b"])
        )

    a = run(1, 0)
    assert a == run(1, 0) and sorted(a) == sorted(keys)
    assert a != run(2, 0) and sorted(run(2, 0)) == sorted(keys)
    assert a != keys  # shuffled
    assert run(1, 2) == run(1, 2) and sorted(run(1, 2)) == sorted(keys)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after", [3, 8])  # mid-epoch (odd: worker rotation) and at the epoch's end
def test_resume_gives_the_same_remaining_stream(synthetic_dir, tokenizer, workers, stop_after):
    def make():
        return build_loader(str(synthetic_dir / "train"), processor_for(tokenizer, 32),
                            LoaderConfig(batch_size=5, num_workers=workers, shuffle_buffer=8, augment=True, samples_per_epoch=40),
                            seed=3)

    reference = make()
    ref_batches = [b for _ in range(2) for b in reference]
    assert len(ref_batches) == 16

    first = make()
    taken = list(itertools.islice(first, stop_after))
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints hold plain JSON
    resumed = make()
    resumed.load_state_dict(state)
    rest = []
    while len(rest) < 16 - stop_after:
        rest += list(resumed)  # the rest of the saved epoch, then whole epochs
    got = taken + rest
    assert [b["keys"] for b in got] == [b["keys"] for b in ref_batches]
    for mine, ref in zip(got, ref_batches):
        assert torch.equal(mine["pixel_values"], ref["pixel_values"])  # augmentation replays too
        assert mine["texts"] == ref["texts"]
    assert resumed.epoch == 2 and resumed.batches_done == 0


def test_state_mismatch_is_refused(tmp_path, tokenizer):
    pattern, _ = _write_text_shards(tmp_path, [8])
    loader = build_loader(pattern, tokenizer, LoaderConfig(batch_size=2), label_vocab=["a", "b"])
    state = loader.state_dict()
    other = build_loader(pattern, tokenizer, LoaderConfig(batch_size=4), label_vocab=["a", "b"])
    with pytest.raises(ValueError, match="saved batch_size=2 but this loader has 4"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="use fewer workers"):
        build_loader(pattern, tokenizer, LoaderConfig(batch_size=4, num_workers=3), label_vocab=["a", "b"])


def _planted_shards(folder):
    """Shard 0: valid VQA samples with planted corrupt ones; shard 1: a tar cut mid-way."""
    folder.mkdir()
    good = _jpeg()
    ok = {"task": "vqa", "text": "what color?", "answers": ["green"]}
    samples = [
        ("v0", {"jpg": good, "json": ok}),
        ("trunc", {"jpg": good[: len(good) // 2], "json": ok}),
        ("v1", {"jpg": good, "json": ok}),
        ("textjpg", {"jpg": b"hello, I am a text file\n", "json": ok}),
        ("nojson", {"jpg": good}),
        ("v2", {"jpg": good, "json": ok}),
        ("badbox", {"jpg": good, "json": {"task": "ground", "text": "x", "boxes": [[10, 10, 99, 20]]}}),
        ("emptytext", {"jpg": good, "json": {**ok, "text": ""}}),
        ("noimage", {"json": ok}),
        ("v3", {"jpg": good, "json": ok}),
    ]
    with wds.TarWriter(str(folder / "shard-000000.tar")) as tar:
        for key, members in samples:
            tar.write({"__key__": key, **members})
    with wds.TarWriter(str(folder / "shard-000001.tar")) as tar:
        for i in range(4):
            tar.write({"__key__": f"t{i}", "jpg": good, "json": ok})
    with tarfile.open(folder / "shard-000001.tar") as tar:
        cut = tar.getmember("t2.jpg").offset_data + 100  # the tar ends inside sample t2's image
    data = (folder / "shard-000001.tar").read_bytes()
    (folder / "shard-000001.tar").write_bytes(data[:cut])
    return str(folder / "shard-{000000..000001}.tar"), ["v0", "v1", "v2", "v3", "t0", "t1"]


def test_inspect_lists_what_the_loader_would_reject_by_reason_and_draws_previews(tmp_path):
    """make-shards inspect: one pass through the loader's decoder; the same bad samples by the same reasons."""
    from vlcoattn.cli.make_shards import main as make_shards

    pattern, valid = _planted_shards(tmp_path / "bad")
    found = inspect_shards(pattern, show=3, image_size=64, progress=False)
    assert found.samples == 10 + 3 and found.usable == len(valid) and found.tasks == {"vqa": len(valid)}
    assert found.bad == {"missing_json": 1, "empty_text": 1, "missing_image": 1, "bad_image": 2, "bad_box": 1,
                         "unreadable_shard": 1}
    assert any(e.startswith("textjpg: ") and "not an image" in e for e in found.bad_examples["bad_image"])
    assert found.answers == {"green": len(valid)} and found.answer_vocab() == ["green"]
    assert [p["text"] for p in found.previews] == ["what color?"] * 3 and found.previews[0]["image"].shape == (64, 64, 3)
    report = found.report()
    assert "13 read, 6 usable, 7 bad" in report and "bad (bad_image): 2" in report and "no dataset.json" in report
    out = tmp_path / "preview.png"
    assert make_shards(["inspect", pattern, "--show", "2", "--show-out", str(out), "--no-progress",
                        "--answer-vocab-out", str(tmp_path / "answers.txt")]) == 0
    assert Image.open(out).size[0] > 200 and (tmp_path / "answers.txt").read_text() == "green\n"


def test_planted_corrupt_samples_are_skipped_counted_and_nothing_valid_is_dropped(
    tmp_path, tokenizer, caplog
):
    pattern, valid = _planted_shards(tmp_path / "bad")
    loader = build_loader(pattern, processor_for(tokenizer, 32),
                          LoaderConfig(batch_size=1, shuffle=False, max_bad_fraction=0.8),
                          answer_vocab=["green"])
    assert len(loader) == 10 + 3  # the cut tar still shows 3 sample headers
    with caplog.at_level(logging.WARNING, logger="vlcoattn.data.read.loader"):
        assert _keys(loader, limit=len(valid)) == valid  # every valid sample, in order, nothing else
    assert loader.bad_samples() == {
        "missing_json": 1,
        "empty_text": 1,
        "missing_image": 1,
        "bad_image": 2,
        "bad_box": 1,
    }
    messages = [r.getMessage() for r in caplog.records]
    assert any("textjpg" in m and "bad_image" in m and "not an image" in m for m in messages)
    assert any("badbox" in m and "outside the 40x30 image" in m for m in messages)
    # the epoch goes on into the next pass to stay full length; the cut tar's lost sample is counted
    assert _keys(loader) == [*valid, "v0"]
    assert loader.bad_samples()["unreadable_shard"] == 2 and sum(loader.bad_samples().values()) == 14
    assert any("only 2 of 3 expected samples readable" in r.getMessage() for r in caplog.records)


def test_planted_corrupt_shards_train_on_with_workers(tmp_path, tokenizer):
    pattern, valid = _planted_shards(tmp_path / "bad")
    loader = build_loader(pattern, processor_for(tokenizer, 32),
                          LoaderConfig(batch_size=1, num_workers=2, shuffle=False, max_bad_fraction=0.8),
                          answer_vocab=["green"])
    epochs = [Counter(_keys(loader)) for _ in range(2)]
    for keys in epochs:
        assert sum(keys.values()) == len(loader)  # every epoch is full length despite bad samples
        assert set(keys) == set(valid)
    bad = loader.bad_samples()
    assert bad["bad_image"] >= 2 and bad["missing_json"] >= 1 and bad["bad_box"] >= 1
    assert bad["empty_text"] >= 1 and bad["missing_image"] >= 1
    assert loader.samples_seen() == sum(bad.values()) + 2 * len(loader)


def test_bad_fraction_limit_fails_with_a_clear_message(tmp_path, tokenizer):
    pattern, _ = _planted_shards(tmp_path / "bad")
    loader = build_loader(pattern, processor_for(tokenizer, 32),
                          LoaderConfig(batch_size=1, shuffle=False, max_bad_fraction=0.2, bad_check_after=5),
                          answer_vocab=["green"])
    with pytest.raises(ValueError, match=r"of \d+ samples were bad .* > max_bad_fraction=20.0%.*bad_image=2"):
        _keys(loader)


def damaged_text_source(folder, shards: int = 4, per_shard: int = 30) -> str:
    """A text-only cls source whose dataset.json declares ``shards * per_shard`` samples, with the first
    shard cut to a third of its bytes and the second overwritten by random bytes (made bad by hand)."""
    with ShardSink(folder, "damaged", shard_size=per_shard) as sink:
        for i in range(shards * per_shard):
            sink.add(f"t{i:04d}", {"task": "cls", "text": f"sample {i}", "label": "ab"[i % 2]})
    tars = sorted(folder.glob("*.tar"))
    os.truncate(tars[0], tars[0].stat().st_size // 3)
    tars[1].write_bytes(random.Random(0).randbytes(tars[1].stat().st_size))
    return str(folder)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_stop_in_a_worker_is_raised_with_its_own_message_and_ends_the_workers(tmp_path, tokenizer, workers):
    """The bad-fraction check fires inside a worker; the main process raises it with the check's message
    (not torch's "Caught ValueError in DataLoader worker process 0"), and no worker outlives the error."""
    source = damaged_text_source(tmp_path / "damaged")
    before = set(multiprocessing.active_children())
    loader = build_loader(source, tokenizer, LoaderConfig(batch_size=4, num_workers=workers, bad_check_after=20))
    with pytest.raises(BadDataError) as caught:
        _keys(loader)
    message = str(caught.value)
    assert re.fullmatch(r"\d+ of \d+ samples were bad \(.* > max_bad_fraction=1\.0%\): unreadable_shard=\d+\. "
                        r"Fix the data \(see the logged examples\) or raise max_bad_fraction\.", message), message
    assert set(multiprocessing.active_children()) <= before


CONSUMER = """
import sys
from transformers import AutoTokenizer
from vlcoattn.assets import minilm_dir
from vlcoattn.data import LoaderConfig, build_loader
loader = build_loader(sys.argv[1], AutoTokenizer.from_pretrained(minilm_dir()),
                      LoaderConfig(batch_size=4, num_workers=2, max_bad_fraction=float(sys.argv[2])))
batches = iter(loader)  # held by name, as a training loop holds it: the error's traceback keeps it alive
next(batches)
if sys.argv[3] == "consumer":
    raise RuntimeError("the consumer failed")
for batch in batches:
    pass
"""


@pytest.mark.parametrize("who", ["loader", "consumer"])
def test_a_process_whose_loader_has_workers_exits_after_an_error(tmp_path, who):
    """The process ends (with the error) whether the loader's stop or its consumer raised: its workers,
    which ignore SIGTERM, are shut down before Python's exit handlers would wait for them forever."""
    source = damaged_text_source(tmp_path / "damaged")
    limit = "0.01" if who == "loader" else "1.0"
    proc = subprocess.Popen([sys.executable, "-c", CONSUMER, source, limit, who], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the process did not exit after the {who}'s error")
    assert proc.returncode == 1
    # the traceback's last line; a worker still running may log a bad sample after it, before its shutdown
    lines = err.strip().splitlines()
    if who == "consumer":
        assert "RuntimeError: the consumer failed" in lines
    else:
        assert any(line.startswith("vlcoattn.data.read.loader.BadDataError: ") and "samples were bad" in line
                   for line in lines)
    with pytest.raises(ProcessLookupError):  # nothing of the process group is left: no worker survived
        os.killpg(proc.pid, 0)


def test_bad_sample_logging_is_rate_limited(tmp_path, tokenizer, caplog):
    folder = tmp_path / "many"
    folder.mkdir()
    with wds.TarWriter(str(folder / "shard-000000.tar")) as tar:
        for i in range(100):
            ok = i % 2 == 0
            tar.write({"__key__": f"k{i:03d}", "json": {"task": "lm", "text": "fine" if ok else " "}})
    loader = build_loader(str(folder / "shard-000000.tar"), tokenizer,
                          LoaderConfig(batch_size=10, shuffle=False, max_bad_fraction=0.6))
    with caplog.at_level(logging.WARNING, logger="vlcoattn.data.read.loader"):
        keys = _keys(loader, limit=5)
    assert len(keys) == 50 and loader.bad_samples() == {"empty_text": 49}
    logged = [r for r in caplog.records if "empty_text" in r.getMessage()]
    assert len(logged) == 5 + 3  # the first five, then the 8th, 16th and 32nd


# ---------------------------------------------------------------------------------------------- mixing


def _two_sources(tmp_path, sizes_a, sizes_b):
    """Two text sources whose keys start with "a" and "b"."""
    a, keys_a = _write_text_shards(tmp_path / "a", sizes_a, prefix="a")
    b, keys_b = _write_text_shards(tmp_path / "b", sizes_b, prefix="b")
    return [a, b], keys_a, keys_b


def _rows_by_source(batch):
    """Counter of the batch's source indices, checked against its keys' prefixes."""
    assert [k[0] for k in batch["keys"]] == ["ab"[s] for s in batch["sources"]]
    return Counter(batch["sources"])


def test_mixing_follows_the_weights_and_every_batch_mixes(tmp_path, tokenizer):
    sources, _, _ = _two_sources(tmp_path, [30, 30], [20, 40])
    loader = build_loader(sources, tokenizer, LoaderConfig(batch_size=32, samples_per_epoch=3200),
                          weights=[3, 1], label_vocab=["a", "b"])
    counts = Counter()
    for batch in loader:
        counts += _rows_by_source(batch)
    # 3200 draws of p = 3/4: sd = sqrt(3200 * 3/4 * 1/4) = 24.5 rows (0.77%); 3% is > 3.9 sd (p < 1e-4)
    assert counts[0] / 3200 == pytest.approx(0.75, abs=0.03)
    even = build_loader(sources, tokenizer, LoaderConfig(batch_size=16), weights=[1, 1], label_vocab=["a", "b"])
    shares = [_rows_by_source(batch) for _ in range(12) for batch in even]
    # a batch of 16 comes from one source with probability 2 * 2**-16 = 3e-5, < 3e-3 over these 84 batches
    assert len(shares) == 84 and all(len(rows) == 2 for rows in shares)


def test_default_weights_are_the_source_sizes(tmp_path, tokenizer):
    sources, _, _ = _two_sources(tmp_path, [50, 40], [30])
    loader = build_loader(sources, tokenizer, LoaderConfig(batch_size=20, samples_per_epoch=2400),
                          label_vocab=["a", "b"])
    assert loader.weights == (90.0, 30.0) and len(loader) == 120
    same = build_loader(sources, tokenizer, LoaderConfig(batch_size=20), weights=[90, 30],
                        label_vocab=["a", "b"])
    other = build_loader(sources, tokenizer, LoaderConfig(batch_size=20), weights=[1, 1],
                         label_vocab=["a", "b"])
    assert same.fingerprint == loader.fingerprint != other.fingerprint  # a saved position needs the same mix
    counts = sum((_rows_by_source(batch) for batch in loader), Counter())
    # 2400 draws of p = 3/4: sd = 21.2 rows (0.88%); 3.5% is 4 sd
    assert counts[0] / 2400 == pytest.approx(0.75, abs=0.035)


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_read_own_slices_of_every_source(tmp_path, tokenizer, workers):
    sources, keys_a, keys_b = _two_sources(tmp_path, [40, 24], [64])
    seen, lengths = [], []
    for rank in range(2):
        loader = build_loader(sources, tokenizer,
                              LoaderConfig(batch_size=16, num_workers=workers, shuffle_buffer=8, samples_per_epoch=64),
                              rank=rank, world_size=2, seed=1, label_vocab=["a", "b"])
        batches = list(loader)
        lengths.append(len(batches))
        assert len(batches) == len(loader) == 2
        assert all(len(_rows_by_source(b)) == 2 for b in batches)  # P(one-source batch of 16) = 3e-5
        seen.append([k for b in batches for k in b["keys"]])
    assert lengths[0] == lengths[1]
    # each of the 2 x max(1, workers) streams draws <= 16 samples per source, its slice has >= 16: no repeats
    assert not set(seen[0]) & set(seen[1]) and all(len(set(keys)) == len(keys) for keys in seen)
    assert set(seen[0] + seen[1]) <= set(keys_a + keys_b)


def _bad_text_shard(folder):
    """One shard of cls samples keyed "b...", every fifth with an empty text (a bad sample)."""
    folder.mkdir()
    with wds.TarWriter(str(folder / "shard-000000.tar")) as tar:
        for i in range(40):
            text = " " if i % 5 == 0 else f"sample b{i}"
            tar.write({"__key__": f"b{i:03d}", "json": {"task": "cls", "text": text, "label": "ab"[i % 2]}})
    return str(folder / "shard-000000.tar")


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_two_sources_gives_the_same_remaining_stream(tmp_path, tokenizer, workers):
    a, _ = _write_text_shards(tmp_path / "a", [13, 20, 7], prefix="a")
    sources = [a, _bad_text_shard(tmp_path / "b")]

    def make():
        return build_loader(sources, tokenizer,
                            LoaderConfig(batch_size=6, num_workers=workers, shuffle_buffer=5, samples_per_epoch=60, max_bad_fraction=0.5),
                            seed=4, weights=[1, 2], label_vocab=["a", "b"])

    reference = make()
    ref_batches = [b for _ in range(3) for b in reference]  # 3 epochs of 10: several passes of b
    first = make()
    taken = list(itertools.islice(first, 7))  # mid-epoch, odd: worker rotation
    state = json.loads(json.dumps(first.state_dict()))
    assert state["global_samples"] == 42 and first.bad_samples()
    resumed = make()
    resumed.load_state_dict(state)
    rest = [b for _ in range(3) for b in resumed]
    got = taken + rest
    assert [b["keys"] for b in got] == [b["keys"] for b in ref_batches]
    assert [b["sources"] for b in got] == [b["sources"] for b in ref_batches]
    assert resumed.bad_samples() == reference.bad_samples() and resumed.bad_samples()["empty_text"] > 0
    assert resumed.epoch == reference.epoch == 3
    other = build_loader(sources, tokenizer,
                         LoaderConfig(batch_size=6, num_workers=workers, samples_per_epoch=60), seed=4,
                         weights=[1, 1], label_vocab=["a", "b"])
    with pytest.raises(ValueError, match=r"saved weights=\[1.0, 2.0\] but this loader has \[1.0, 1.0\]"):
        other.load_state_dict(state)


def test_elastic_resume_on_more_ranks(tmp_path, tokenizer):
    sources, _, _ = _two_sources(tmp_path, [40], [40])

    def make(rank, world_size, workers=0):
        return build_loader(sources, tokenizer, LoaderConfig(batch_size=8, num_workers=workers, shuffle=False),
                            rank=rank, world_size=world_size, label_vocab=["a", "b"])

    one = make(0, 1)
    assert len(one) == 10
    list(itertools.islice(one, 4))
    state = json.loads(json.dumps(one.state_dict()))
    assert state["global_samples"] == 32
    with pytest.raises(ValueError, match=r"saved world_size=1 but this loader has 2 .*unless elastic=True"):
        make(1, 2).load_state_dict(state)

    exact, same = make(0, 1), make(0, 1)
    exact.load_state_dict(state)
    same.load_state_dict(state, elastic=True)  # same layout: the exact resume
    assert _keys(same) == _keys(exact)

    for rank in range(2):
        loader = make(rank, 2)
        loader.load_state_dict(state, elastic=True)
        assert (loader.epoch, loader.batches_done, len(loader)) == (0, 2, 5)  # 32 of 80 samples: 2 of 5 steps
        batches = list(loader)
        assert len(batches) == 3 and loader.epoch == 1
        # 32 * 40/80 = 16 samples of each source were read: 40% of each rank's slice of 20 -> offset 8
        keys = batches[0]["keys"]
        first = {prefix: next(k for k in keys if k[0] == prefix) for prefix in "ab"}
        assert first == {"a": f"a0-{20 * rank + 8:03d}", "b": f"b0-{20 * rank + 8:03d}"}

    workers = make(0, 1, workers=2)
    workers.load_state_dict(state, elastic=True)  # another worker count is elastic too
    assert (workers.batches_done, len(list(workers))) == (4, 6)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "got 1 weights for 2 sources"),
        ([1.0, 2.0, 3.0], "got 3 weights for 2 sources"),
        ([1.0, 0.0], "finite and > 0"),
        ([-1.0, 1.0], "finite and > 0"),
        ([1.0, float("nan")], "finite and > 0"),
        ([float("inf"), 1.0], "finite and > 0"),
    ],
)
def test_bad_weights_are_refused(tmp_path, tokenizer, weights, message):
    sources, _, _ = _two_sources(tmp_path, [8], [8])
    with pytest.raises(ValueError, match=message):
        build_loader(sources, tokenizer, LoaderConfig(batch_size=2), weights=weights, label_vocab=["a", "b"])


def test_a_source_too_small_for_the_streams_is_refused(tmp_path, tokenizer):
    sources, _, _ = _two_sources(tmp_path, [40], [3])
    with pytest.raises(ValueError, match="source 1 has 3 samples, fewer than one for each of the 2 worker"):
        build_loader(sources, tokenizer, LoaderConfig(batch_size=4, num_workers=2), world_size=2, rank=0,
                     label_vocab=["a", "b"])


def test_flip_only_augmentation_gives_the_plain_image_or_its_mirror(synthetic_dir, tokenizer):
    """``augment`` with ``color_jitter=0``: each sample comes back as it is or mirrored with its left/right
    words swapped, so a frozen encoder's feature cache still hits (two versions per sample); with the
    default jitter the pixels are neither."""
    from vlcoattn.data.read.transforms import swap_left_right

    def batch(seed: int = 1, **kwargs):
        loader = build_loader(str(synthetic_dir / "train"), processor_for(tokenizer, 32),
                              LoaderConfig(batch_size=16, shuffle=False, **kwargs), seed=seed)
        return next(iter(loader))

    plain = batch()
    flipped = 0
    for b in (batch(augment=True, color_jitter=0.0), batch(augment=True, color_jitter=0.0, seed=2)):
        assert b["keys"] == plain["keys"]
        for i, text in enumerate(b["texts"]):
            mirror = text != plain["texts"][i] or not torch.equal(b["pixel_values"][i], plain["pixel_values"][i])
            expected = plain["pixel_values"][i].flip(-1) if mirror else plain["pixel_values"][i]
            assert (b["pixel_values"][i] - expected).abs().max() < 0.05  # resampling rounding only
            assert text == (swap_left_right(plain["texts"][i]) if mirror else plain["texts"][i])
            flipped += mirror
    assert 0 < flipped < 32
    jittered = batch(augment=True)
    neither = [not any(torch.allclose(jittered["pixel_values"][i], v, atol=0.05)
                       for v in (plain["pixel_values"][i], plain["pixel_values"][i].flip(-1))) for i in range(16)]
    assert sum(neither) >= 12
