"""Hugging Face datasets both ways: our shards read through ``load_dataset("webdataset", ...)``, and a
saved Dataset / DatasetDict converted by ``make-shards hf`` into shards that the loader and the trainer
read (VQA, grounding, text classification)."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vlcoattn.cli.make_shards import main as make_shards_main
from vlcoattn.data import (
    DatasetInfo,
    LoaderConfig,
    ShardSink,
    SyntheticConfig,
    build_loader,
    decode_image,
    invert_boxes,
    synthetic_samples,
    write_synthetic,
)
from vlcoattn.data.read.loader import read_shard
from vlcoattn.data.read.shards import resolve_shards
from vlcoattn.text import CooBertConfig, CooBertModel
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.metrics_log import read_metrics
from vlcoattn.train.trainer import train
from vlcoattn.utils.cli import run_cli

from helpers import processor_for

datasets = pytest.importorskip("datasets")

SIZE = 64


def _shard_samples(folder) -> dict[str, tuple[dict, bytes | None]]:
    """key -> (record, image bytes or None) of a shard dir, read with the project's shard reader."""
    shards, _ = resolve_shards([str(folder)])
    out = {}
    for shard in shards:
        for raw in read_shard(shard.url, 0, shard.samples):
            image = next((raw[ext] for ext in ("png", "jpg") if ext in raw), None)
            out[raw["__key__"]] = (json.loads(raw["json"]), image)
    return out


def _png(color, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(color, size=(50, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ------------------------------------------------------------------ our shards through load_dataset


def _features():
    """What docs/data.md passes (the json member as Json: every record whole), both image members, undecoded."""
    image, name = datasets.Image(decode=False), datasets.Value("string")
    return datasets.Features({"json": datasets.Json(), "png": image, "jpg": image, "__key__": name, "__url__": name})


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "arrow"])
def test_our_shards_read_back_exactly_through_load_dataset_webdataset(tmp_path, streaming):
    """Samples of every kind in several shards: VQA (png), grounding (jpg, float boxes first seen after
    five samples), text-only cls, a key with a dot, nested meta. Every key, record and image comes back
    equal; dataset.json beside the tars stays out of the data_files pattern."""
    written = {}
    with ShardSink(tmp_path / "mixed", "test", shard_size=3) as sink:
        for i in range(6):
            record = {"task": "vqa", "text": f"What colour is {i}?", "answers": ["red", "röd"],
                      "meta": {"i": i, "nested": {"list": [1, 2]}}}
            written[f"v{i}"] = (record, _png((i, 0, 0)))
        written["g_1"] = ({"task": "ground", "text": "the box", "boxes": [[1.5, 2.0, 10.0, 19.5]]}, _jpg((0, 9, 0)))
        written["c"] = ({"task": "cls", "text": "news text", "label": "tech"}, None)
        for key, (record, image) in written.items():
            ext = None if image is None else ("png" if image.startswith(b"\x89PNG") else "jpg")
            sink.write(key.replace("_", "."), record, image, ext)
    write_synthetic(tmp_path / "clevr", 3, seed=0, config=SyntheticConfig(image_size=48), shard_size=4,
                    progress=False)
    expected = {**_shard_samples(tmp_path / "clevr" / "train"), **written}
    assert len(list((tmp_path / "clevr" / "train").glob("shard-*.tar"))) > 1 and len(expected) > 20

    data_files = {"train": [str(tmp_path / "mixed" / "shard-*.tar"), str(tmp_path / "clevr" / "train" / "shard-*.tar")]}
    ds = datasets.load_dataset("webdataset", data_files=data_files, split="train", features=_features(),
                               streaming=streaming, cache_dir=str(tmp_path / "cache"))
    got = {}
    for row in ds:
        images = [row[ext]["bytes"] for ext in ("png", "jpg") if row[ext] is not None]
        got[row["__key__"]] = (row["json"], images[0] if images else None)
    assert got.keys() == expected.keys()
    for key, (record, image) in expected.items():
        assert got[key][0] == record, key
        assert got[key][1] == image, key


# -------------------------------------------------------------------------------- make-shards hf


def _scenes(split: str, num: int) -> list[tuple[Image.Image, dict]]:
    """CLEVR-lite samples of ``num`` scenes as (PIL image, record): exact boxes and answers."""
    return [(Image.open(io.BytesIO(data)), record)
            for _, data, _, record in synthetic_samples(split, num, 0, SyntheticConfig(image_size=SIZE))]


def _vqa_split(split: str, num: int):
    """A VQA v2-style split: image, question, answers as a list of {answer, answer_id}, question_type;
    then three bad rows (no image, empty question, no answers)."""
    rows = [(image, r["text"], r["answers"], r["meta"]["type"]) for image, r in _scenes(split, num)
            if r["task"] == "vqa"]
    rows += [(None, "what?", ["yes"], "x"), (rows[0][0], "  ", ["yes"], "x"), (rows[0][0], "what?", [], "x")]
    features = datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "answers": datasets.List({"answer": datasets.Value("string"), "answer_id": datasets.Value("int32")}),
        "question_type": datasets.Value("string"),
    })
    return datasets.Dataset.from_dict({
        "image": [r[0] for r in rows], "question": [r[1] for r in rows],
        "answers": [[{"answer": a, "answer_id": j} for j, a in enumerate(r[2])] for r in rows],
        "question_type": [r[3] for r in rows],
    }, features=features), rows


@pytest.fixture(scope="module")
def vqa_saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-vqa")
    (train, train_rows), (val, val_rows) = _vqa_split("train", 6), _vqa_split("val", 2)
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(root / "saved"))
    return root, {"train": train_rows, "validation": val_rows}


def _convert(argv: list[str]) -> None:
    assert make_shards_main(["hf", *argv, "--no-progress"]) == 0


def test_vqa_datasetdict_converts_split_by_split_with_skips(vqa_saved, tmp_path, capsys, minilm_tokenizer):
    root, rows = vqa_saved
    out = tmp_path / "vqa"
    _convert(["--input", str(root / "saved"), "--task", "vqa", "--text-column", "question",
              "--answer-column", "answers.answer", "--type-column", "question_type", "--out", str(out)])
    assert f"{out}/val: {len(rows['validation']) - 3} samples" in capsys.readouterr().out
    for hf_split, ours in (("train", "train"), ("validation", "val")):
        info, samples = DatasetInfo.load(out / ours), _shard_samples(out / ours)
        good = rows[hf_split][:-3]
        assert info.skipped == {"missing_image": 1, "empty_text": 1, "bad_field": 1}
        assert info.source == "hf" and info.options["split"] == hf_split and info.tasks == {"vqa": len(good)}
        assert samples.keys() == {f"{hf_split}-{i:09d}" for i in range(len(good))}
        for i, (image, question, answers, kind) in enumerate(good):
            record, data = samples[f"{hf_split}-{i:09d}"]
            assert record == {"task": "vqa", "text": question, "answers": answers,
                              "meta": {"index": i, "split": hf_split, "type": kind}}
            assert np.array_equal(np.asarray(decode_image(data)), np.asarray(image.convert("RGB")))
        counts = Counter(a for _, _, answers, _ in good for a in answers)
        assert info.answer_vocab == sorted(counts, key=lambda a: (-counts[a], a))
    train_info = DatasetInfo.load(out / "train")
    loader = build_loader(str(out / "train"), processor_for(minilm_tokenizer, 32),
                          LoaderConfig(batch_size=4, shuffle=False), answer_vocab=train_info.answer_vocab)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["tasks"] == ["vqa"] * 4


def _ground_dataset():
    """One RefCOCO/COCO-style Dataset: image, sentences (a list: one sample each), objects.bbox in xywh;
    then rows with an inverted box, a box outside the image, a 3-number box, no image and no sentence."""
    rows = [(image, [r["text"], r["text"].upper()], r["boxes"][0]) for image, r in _scenes("train", 4)
            if r["task"] == "ground"]
    bad = [(rows[0][0], ["inverted"], [30, 30, -10, 10]), (rows[0][0], ["outside"], [50, 50, 40, 10]),
           (rows[0][0], ["three"], [1, 2, 3]), (None, ["no image"], [1, 2, 3, 4]), (rows[0][0], [], [1, 2, 4, 4])]
    xywh = [[x0, y0, x1 - x0, y1 - y0] for _, _, (x0, y0, x1, y1) in rows] + [box for _, _, box in bad]
    features = datasets.Features({
        "image": datasets.Image(), "sentences": datasets.List(datasets.Value("string")),
        "objects": {"bbox": datasets.List(datasets.List(datasets.Value("float32"))),
                    "category": datasets.List(datasets.Value("string"))},
    })
    all_rows = rows + bad
    ds = datasets.Dataset.from_dict({
        "image": [r[0] for r in all_rows], "sentences": [r[1] for r in all_rows],
        "objects": [{"bbox": [b], "category": ["thing"]} for b in xywh],
    }, features=features)
    return ds, rows


def test_ground_dataset_with_nested_xywh_boxes_and_a_list_of_sentences(tmp_path, minilm_tokenizer):
    ds, rows = _ground_dataset()
    ds.save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "ground"
    _convert(["--input", str(tmp_path / "saved"), "--task", "ground", "--text-column", "sentences",
              "--boxes-column", "objects.bbox", "--box-format", "xywh", "--out", str(out), "--no-shuffle"])
    info, samples = DatasetInfo.load(out), _shard_samples(out)
    assert info.skipped == {"bad_box": 3, "missing_image": 1, "empty_text": 1}
    assert info.num_samples == 2 * len(rows) and info.tasks == {"ground": 2 * len(rows)}
    for i, (_, sentences, box) in enumerate(rows):
        for j, sentence in enumerate(sentences):
            record, _ = samples[f"{i:09d}-{j}"]
            assert record == {"task": "ground", "text": sentence, "boxes": [[float(v) for v in box]],
                              "meta": {"index": i}}
    loader = build_loader(str(out), processor_for(minilm_tokenizer, SIZE), LoaderConfig(batch_size=len(samples)))
    (batch,) = list(loader)
    for k, key in enumerate(batch["keys"]):
        expected = torch.tensor(samples[key][0]["boxes"][0])
        assert torch.allclose(invert_boxes(batch["boxes"][k], batch["letterbox"][k]), expected, atol=0.5)


def test_text_classification_with_class_labels_and_chosen_splits(tmp_path, minilm_tokenizer):
    names = ["business", "sport"]
    features = datasets.Features({"body": datasets.Value("string"), "topic": datasets.ClassLabel(names=names)})
    texts = {"train": [("Shares rose.", 0), ("The team won.", 1), ("Banks fell.", 0), ("", 1), ("Unlabelled.", -1)],
             "test": [("Markets calm.", 0), ("A late goal.", 1)], "extra": [("Ignored.", 0)]}
    saved = tmp_path / "saved"
    datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"body": [t for t, _ in rows], "topic": [y for _, y in rows]},
                                          features=features)
        for split, rows in texts.items()
    }).save_to_disk(str(saved))
    out = tmp_path / "cls"
    _convert(["--input", str(saved), "--task", "cls", "--text-column", "body", "--label-column", "topic",
              "--split", "train", "test=heldout", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["heldout", "train"]
    for split, folder in (("train", "train"), ("test", "heldout")):
        info, samples = DatasetInfo.load(out / folder), _shard_samples(out / folder)
        good = [(i, t, y) for i, (t, y) in enumerate(texts[split]) if t and y >= 0]
        assert samples == {
            f"{split}-{i:09d}": ({"task": "cls", "text": t, "label": names[y], "meta": {"index": i, "split": split}},
                                 None) for i, t, y in good}
        assert info.label_vocab == names
        assert info.label_counts == [sum(y == c for _, _, y in good) for c in range(len(names))]
    assert DatasetInfo.load(out / "train").skipped == {"empty_text": 1, "bad_field": 1}
    (batch,) = list(build_loader(str(out / "train"), minilm_tokenizer, LoaderConfig(batch_size=3, shuffle=False)))
    assert "pixel_values" not in batch and sorted(batch["labels"].tolist()) == [0, 0, 1]


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(make_shards_main, ["hf", *argv, "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_options_are_one_clear_line(vqa_saved, tmp_path, capsys):
    saved, out = str(vqa_saved[0] / "saved"), str(tmp_path / "out")
    base = ["--input", saved, "--out", out, "--task", "vqa", "--answers-column", "answers.answer"]
    err = _cli_error(base, capsys)  # --text-column defaults to text
    assert "--text-column 'text': the dataset has no column 'text'" in err
    assert "['answers', 'image', 'question', 'question_type']" in err
    err = _cli_error([*base, "--text-column", "question", "--answers-column", "answers.text"], capsys)
    assert "column 'answers' has no field 'text'; available: ['answer', 'answer_id']" in err
    err = _cli_error([*base, "--text-column", "question", "--split", "dev"], capsys)
    assert "no split 'dev'; available: ['train', 'validation']" in err
    err = _cli_error([*base, "--text-column", "question", "--image-column", "question"], capsys)
    assert "--image-column 'question' holds Value('string'), not a datasets.Image feature" in err
    err = _cli_error(["--input", saved, "--out", out, "--task", "cls", "--image-column", "image"], capsys)
    assert "--task cls is text-only: drop --image-column" in err
    err = _cli_error(["--input", str(tmp_path), "--out", out, "--task", "cls"], capsys)
    assert "is not a Dataset / DatasetDict written by save_to_disk" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_before_any_split_is_written(vqa_saved, tmp_path, capsys):
    saved, out = str(vqa_saved[0] / "saved"), tmp_path / "out"
    argv = ["--input", saved, "--out", str(out), "--task", "vqa", "--text-column", "question",
            "--answers-column", "answers.answer"]
    _convert([*argv, "--split", "validation=val"])
    before = sorted(p.name for p in (out / "val").iterdir())
    assert "already holds shards" in _cli_error(argv, capsys)
    assert not (out / "train").exists() and sorted(p.name for p in (out / "val").iterdir()) == before
    _convert([*argv, "--overwrite"])
    assert DatasetInfo.load(out / "train").num_samples > 0


# ------------------------------------------------------------------------- one command to the trainer


def test_converted_dirs_train_a_tiny_vqa_and_grounding_job(vqa_saved, tmp_path, minilm_tokenizer):
    """The saved HF datasets -> make-shards hf -> a two-step vqa+ground run that evaluates on val."""
    root, _ = vqa_saved
    _convert(["--input", str(root / "saved"), "--task", "vqa", "--text-column", "question",
              "--answers-column", "answers.answer", "--out", str(tmp_path / "vqa")])
    _ground_dataset()[0].save_to_disk(str(tmp_path / "ground-saved"))
    _convert(["--input", str(tmp_path / "ground-saved"), "--task", "ground", "--text-column", "sentences",
              "--boxes-column", "objects.bbox", "--box-format", "xywh", "--out", str(tmp_path / "ground")])
    text = tmp_path / "coobert-tiny"
    CooBertModel(CooBertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=64, shared_key_dim=16,
                               max_position_embeddings=64)).save_pretrained(text)
    minilm_tokenizer.save_pretrained(text)
    cfg = {
        "task": "vqa+ground",
        "run": {"dir": str(tmp_path / "run"), "seed": 0, "log_every": 1, "progress": False},
        "model": {"text": str(text), "convert_from": None, "backbone": "convnext_atto", "pretrained_backbone": False,
                  "image_size": SIZE, "config": {"coattention_config": {"num_layers": 1},
                                                 "vision_config": {"out_indices": [-2]}}},
        "data": {"train": [str(tmp_path / "vqa" / "train"), str(tmp_path / "ground")],
                 "val": [str(tmp_path / "vqa" / "val")], "batch_size": 4, "eval_batch_size": 8,
                 "max_text_len": 24, "shuffle_buffer": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"steps": 2, "report": False},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(cfg))
    result = train(load_config(JobConfig, tmp_path / "job.yaml"))
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert result.metrics["val"], result.metrics
    logged = [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if m["split"] == "train"]
    assert sum(m["rows/vqa"] for m in logged) > 0 and sum(m["rows/ground"] for m in logged) > 0
