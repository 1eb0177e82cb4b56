"""Every converter on small fixtures in the official layouts: write -> tar / webdataset / our loader."""

from __future__ import annotations

import io
import json
import logging
import pickle
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from transformers import AutoTokenizer

from vlcoattn.assets import minilm_dir
from vlcoattn.cli.make_shards import main as make_shards_main
from vlcoattn.data import (
    DatasetInfo,
    LoaderConfig,
    build_loader,
    convert_jsonl,
    convert_refcoco,
    convert_text,
    convert_textcls,
    convert_vqa2,
    invert_boxes,
)
from vlcoattn.utils.cli import run_cli

from helpers import processor_for


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def _jpeg(path, w, h, color=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path, format="JPEG", quality=90)


def _tar_members(out_dir):
    names = []
    for shard in sorted(out_dir.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    return names


def _wds_samples(out_dir):
    urls = [str(p) for p in sorted(out_dir.glob("shard-*.tar"))]
    return list(wds.WebDataset(urls, shardshuffle=False))


def test_jsonl_roundtrip_with_skips(tmp_path, tokenizer):
    _jpeg(tmp_path / "img/a.jpg", 64, 48)
    _jpeg(tmp_path / "img/sub/b.jpg", 120, 80)
    (tmp_path / "img/notes.jpg").write_text("not an image")
    lines = [
        {"id": "q1", "image": "a.jpg", "text": "What color?", "task": "vqa", "answer": "Red."},
        {"id": "g.1", "image": "sub/b.jpg", "text": "the box", "task": "ground", "boxes": [[10, 20, 30, 40]]},
        {"text": "news text", "task": "cls", "label": "tech"},
        {"image": "missing.jpg", "text": "q", "task": "vqa", "answers": ["a"]},
        {
            "image": "a.jpg",
            "text": "far",
            "task": "ground",
            "boxes": [[50, 40, 30, 20]],
        },  # xywh -> out of image
        {"image": "notes.jpg", "text": "q", "task": "vqa", "answers": ["a"]},
        {"text": "   ", "task": "lm"},
        {"text": "x", "task": "dance"},
    ]
    src = tmp_path / "data.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in lines) + "\nnot json\n")
    info = convert_jsonl(
        src,
        tmp_path / "img",
        tmp_path / "out",
        box_format="xywh",
        normalize_answers=True,
        shard_size=2,
        progress=False,
    )
    assert info.num_samples == 3 and len(info.shards) == 2
    assert info.tasks == {"cls": 1, "ground": 1, "vqa": 1}
    assert info.skipped == {
        "bad_box": 1,
        "bad_field": 1,
        "bad_image": 1,
        "bad_json": 1,
        "empty_text": 1,
        "missing_image": 1,
    }
    assert info.answer_vocab == ["red"] and info.label_vocab == ["tech"]
    assert DatasetInfo.load(tmp_path / "out") == info
    names = _tar_members(tmp_path / "out")
    assert "q1.jpg" in names and "g_1.json" in names and "g_1.jpg" in names  # dots never split a key
    samples = {s["__key__"]: s for s in _wds_samples(tmp_path / "out")}
    assert json.loads(samples["g_1"]["json"])["boxes"] == [[10, 20, 40, 60]]
    assert samples["q1"]["jpg"] == (tmp_path / "img/a.jpg").read_bytes()  # copied, not re-encoded

    loader = build_loader(str(tmp_path / "out"), processor_for(tokenizer, 32),
                          LoaderConfig(batch_size=3, shuffle=False))
    (batch,) = list(loader)
    assert sorted(batch["tasks"]) == ["cls", "ground", "vqa"]
    assert batch["image_mask"].tolist() == [k != "000000003" for k in batch["keys"]]
    assert batch["labels"].tolist() == [0 if k == "000000003" else -100 for k in batch["keys"]]
    i = batch["keys"].index("g_1")
    assert batch["box_mask"].tolist() == [k == "g_1" for k in batch["keys"]]
    back = invert_boxes(batch["boxes"][i], batch["letterbox"][i])
    assert torch.allclose(back, torch.tensor([10.0, 20.0, 40.0, 60.0]), atol=0.5)


def test_jsonl_cls_and_lm_batches_are_text_only(tmp_path, tokenizer):
    src = tmp_path / "t.jsonl"
    src.write_text(
        "\n".join(json.dumps({"text": f"text {i}", "task": "cls", "label": "ab"[i % 2]}) for i in range(6))
    )
    convert_jsonl(src, None, tmp_path / "out", progress=False, shuffle=False)
    (batch,) = list(build_loader(str(tmp_path / "out"), tokenizer, LoaderConfig(batch_size=6, shuffle=False)))
    assert "pixel_values" not in batch and batch["labels"].tolist() == [0, 1, 0, 1, 0, 1]
    (tmp_path / "lm.jsonl").write_text(json.dumps({"text": "free text", "task": "lm"}))
    convert_jsonl(tmp_path / "lm.jsonl", None, tmp_path / "lm", progress=False)
    with pytest.raises(ValueError, match="mix 'cls' and 'lm'"):
        build_loader([str(tmp_path / "out"), str(tmp_path / "lm")], tokenizer, LoaderConfig(batch_size=2))


def test_jsonl_max_side_reencodes_and_scales_boxes(tmp_path):
    _jpeg(tmp_path / "img/big.jpg", 400, 200)
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"image": "big.jpg", "text": "t", "task": "ground", "boxes": [[100, 50, 300, 150]]})
    )
    convert_jsonl(tmp_path / "d.jsonl", tmp_path / "img", tmp_path / "out", max_side=100, progress=False)
    (sample,) = _wds_samples(tmp_path / "out")
    assert Image.open(io.BytesIO(sample["jpg"])).size == (100, 50)
    assert json.loads(sample["json"])["boxes"] == [[25.0, 12.5, 75.0, 37.5]]


def _vqa_fixture(root):
    questions = {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": "val2014",
        "license": {},
        "questions": [
            {"image_id": 42, "question": "How many dogs?", "question_id": 420},
            {"image_id": 42, "question": "Is it sunny?", "question_id": 421},
            {"image_id": 7, "question": "What is it?", "question_id": 70},
            {"image_id": 9, "question": "Where?", "question_id": 90},
        ],
    }

    def ann(qid, img, answers):
        return {
            "question_id": qid,
            "image_id": img,
            "question_type": "how many",
            "answer_type": "number",
            "multiple_choice_answer": answers[0],
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
            ],
        }

    annotations = {
        "info": {},
        "license": {},
        "data_subtype": "val2014",
        "annotations": [
            ann(420, 42, ["two"] * 6 + ["2"] * 2 + ["3", "three dogs"]),
            ann(421, 42, ["Yes"] * 9 + ["no"]),
            ann(70, 7, ["a cat"] * 10),
            ann(90, 9, ["here"] * 10),
        ],
    }
    (root / "q.json").write_text(json.dumps(questions))
    (root / "a.json").write_text(json.dumps(annotations))
    _jpeg(root / "val2014/COCO_val2014_000000000042.jpg", 64, 64)
    _jpeg(root / "val2014/000000000007.jpg", 48, 64)  # 2017 naming works too; image 9 is missing


def test_vqa2_roundtrip_keeps_ten_normalized_answers(tmp_path, tokenizer):
    _vqa_fixture(tmp_path)
    info = convert_vqa2(tmp_path / "q.json", tmp_path / "a.json", tmp_path, tmp_path / "out", progress=False,
                        min_answer_count=1)
    assert info.num_samples == 3 and info.skipped == {"missing_image": 1}
    # the vocabulary counts each question's multiple-choice answer, as the VQA v2 literature does
    assert info.answer_vocab == ["2", "cat", "yes"] and info.answer_counts == [1, 1, 1]
    assert info.options["min_answer_count"] == 1
    samples = {s["__key__"]: json.loads(s["json"]) for s in _wds_samples(tmp_path / "out")}
    assert samples["vqa-420"]["answers"] == ["2"] * 8 + ["3", "3 dogs"]
    assert samples["vqa-420"]["meta"]["type"] == "how many"
    loader = build_loader(str(tmp_path / "out"), processor_for(tokenizer, 32),
                          LoaderConfig(batch_size=3, shuffle=False))
    (batch,) = list(loader)
    vocab = info.answer_vocab
    i = batch["keys"].index("vqa-420")
    assert batch["answer_scores"][i, vocab.index("2")].item() == pytest.approx(1.0)
    assert batch["answer_scores"][i].sum().item() == pytest.approx(1.0)  # "3" (0.3) is outside: scored 0
    assert batch["answer_ids"][i].item() == vocab.index("2")
    assert len(batch["answers"][i]) == 10  # all ten stay for the official metric
    # the default keeps the answers of at least 9 questions (the usual 3,129 on train2014): none of these
    default = convert_vqa2(tmp_path / "q.json", tmp_path / "a.json", tmp_path, tmp_path / "out9", progress=False)
    assert default.answer_vocab == [] and default.num_samples == 3


def _refer_fixture(root):
    instances = {
        "images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "height": 60, "width": 80}],
        "annotations": [
            {"id": 11, "image_id": 5, "bbox": [10, 5, 20, 30], "category_id": 1},
            {"id": 12, "image_id": 5, "bbox": [70, 50, 30, 30], "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    refs = [
        {
            "ref_id": 1,
            "ann_id": 11,
            "image_id": 5,
            "split": "val",
            "category_id": 1,
            "file_name": "COCO_train2014_000000000005_11.jpg",
            "sent_ids": [100, 101],
            "sentences": [
                {"raw": "Man on the LEFT", "sent": "man on the left", "sent_id": 100, "tokens": []},
                {"raw": "", "sent": "left guy", "sent_id": 101, "tokens": []},
            ],
        },
        {
            "ref_id": 2,
            "ann_id": 12,
            "image_id": 5,
            "split": "val",
            "category_id": 1,
            "file_name": "x",
            "sentences": [{"raw": "corner", "sent": "corner", "sent_id": 102}],
        },  # box leaves the image
        {
            "ref_id": 3,
            "ann_id": 11,
            "image_id": 5,
            "split": "train",
            "category_id": 1,
            "file_name": "x",
            "sentences": [{"raw": "train sentence", "sent": "train sentence", "sent_id": 103}],
        },
    ]
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "refs.json").write_text(json.dumps(refs))
    with (root / "refs(unc).p").open("wb") as f:
        pickle.dump(refs, f)
    _jpeg(root / "images/COCO_train2014_000000000005.jpg", 80, 60)


def test_refcoco_roundtrip_one_sample_per_sentence(tmp_path, tokenizer):
    _refer_fixture(tmp_path)
    info = convert_refcoco(
        tmp_path / "refs.json",
        tmp_path / "instances.json",
        tmp_path / "images",
        tmp_path / "out",
        split="val",
        progress=False,
    )
    assert info.num_samples == 2 and info.skipped == {"bad_box": 1} and info.tasks == {"ground": 2}
    samples = {s["__key__"]: json.loads(s["json"]) for s in _wds_samples(tmp_path / "out")}
    assert samples["ref-1-100"] == {
        "task": "ground",
        "text": "Man on the LEFT",
        "boxes": [[10, 5, 30, 35]],
        "meta": {
            "ref_id": 1,
            "ann_id": 11,
            "image_id": 5,
            "sent_id": 100,
            "category": "person",
            "split": "val",
        },
    }
    assert samples["ref-1-101"]["text"] == "left guy"
    (batch,) = list(
        build_loader(str(tmp_path / "out"), processor_for(tokenizer, 40),
                     LoaderConfig(batch_size=2, shuffle=False))
    )
    assert torch.allclose(
        invert_boxes(batch["boxes"][0], batch["letterbox"][0]), torch.tensor([10.0, 5, 30, 35]), atol=0.5
    )
    with pytest.raises(ValueError, match="no refs in split 'testB'"):
        convert_refcoco(
            tmp_path / "refs.json",
            tmp_path / "instances.json",
            tmp_path / "images",
            tmp_path / "o2",
            split="testB",
            progress=False,
        )


def test_refcoco_pickle_needs_explicit_permission(tmp_path):
    _refer_fixture(tmp_path)
    args = (tmp_path / "refs(unc).p", tmp_path / "instances.json", tmp_path / "images", tmp_path / "out")
    with pytest.raises(ValueError, match="--allow-pickle"):
        convert_refcoco(*args, split="val", progress=False)
    info = convert_refcoco(*args, split="val", allow_pickle=True, progress=False)
    assert info.num_samples == 2


def test_textcls_folder_and_csv(tmp_path, tokenizer):
    for label, texts in {"sport": ["Goal!\n\nA match.", "Cup final"], "tech": ["New chip", ""]}.items():
        for i, t in enumerate(texts):
            (tmp_path / "bbc" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "bbc" / label / f"{i:03d}.txt").write_text(t)
    (tmp_path / "bbc" / "tech" / "002.txt").write_bytes("caf\xe9 latin-1".encode("latin-1"))
    info = convert_textcls(tmp_path / "bbc", tmp_path / "out", progress=False)
    assert (
        info.num_samples == 4 and info.skipped == {"empty_text": 1} and info.label_vocab == ["sport", "tech"]
    )
    texts = {s["__key__"]: json.loads(s["json"]) for s in _wds_samples(tmp_path / "out")}
    assert texts["sport-000"] == {"task": "cls", "text": "Goal!\n\nA match.", "label": "sport"}
    assert texts["tech-002"]["text"] == "café latin-1"
    (batch,) = list(build_loader(str(tmp_path / "out"), tokenizer, LoaderConfig(batch_size=4, shuffle=False)))
    assert sorted(batch["labels"].tolist()) == [0, 0, 1, 1]

    (tmp_path / "d.csv").write_text('body,topic\n"hello, world",greet\nbye,leave\n')
    info = convert_textcls(
        tmp_path / "d.csv", tmp_path / "csv", text_column="body", label_column="topic", progress=False
    )
    assert info.label_vocab == ["greet", "leave"] and info.num_samples == 2
    with pytest.raises(ValueError, match="needs columns 'text' and 'label'"):
        convert_textcls(tmp_path / "d.csv", tmp_path / "csv2", progress=False)


def test_text_paragraphs_for_lm(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("First para\nstill first.\n\n  \nSecond.\n\nx\n")
    info = convert_text([tmp_path / "a.txt"], tmp_path / "out", min_chars=2, progress=False, shuffle=False)
    assert info.num_samples == 2 and info.skipped == {"too_short": 1} and info.tasks == {"lm": 2}
    texts = [json.loads(s["json"])["text"] for s in _wds_samples(tmp_path / "out")]
    assert texts == ["First para still first.", "Second."]
    (batch,) = list(build_loader(str(tmp_path / "out"), tokenizer, LoaderConfig(batch_size=2, shuffle=False)))
    assert torch.equal(batch["labels"] == -100, batch["attention_mask"] == 0)


def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    convert_text([tmp_path / "a.txt"], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="--overwrite"):
        convert_text([tmp_path / "a.txt"], tmp_path / "out", progress=False)
    assert (
        convert_text([tmp_path / "a.txt"], tmp_path / "out", overwrite=True, progress=False).num_samples == 1
    )


def test_cli_all_subcommands(tmp_path, capsys):
    _vqa_fixture(tmp_path)
    _refer_fixture(tmp_path)
    (tmp_path / "a.txt").write_text("one\n\ntwo")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "t", "task": "cls", "label": "x"}))
    runs = [
        ["jsonl", "--input", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "s1")],
        [
            "vqa2",
            "--questions",
            str(tmp_path / "q.json"),
            "--annotations",
            str(tmp_path / "a.json"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "s2"),
        ],
        [
            "refcoco",
            "--refs",
            str(tmp_path / "refs.json"),
            "--instances",
            str(tmp_path / "instances.json"),
            "--images",
            str(tmp_path / "images"),
            "--split",
            "val",
            "--out",
            str(tmp_path / "s3"),
        ],
        ["textcls", "--input", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "s4")],
        ["text", "--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "s5")],
        [
            "synthetic",
            "--out",
            str(tmp_path / "s6"),
            "--num",
            "4",
            "--seed",
            "1",
            "--size",
            "64",
            "--split-holdout",
            "red:circle",
        ],
    ]
    for argv in runs:
        assert make_shards_main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "s2: 3 samples in 1 shard(s) (vqa=3); skipped: missing_image=1" in out
    assert "s3: 2 samples" in out and "s5: 2 samples" in out
    for split in ("train", "val", "test", "holdout"):
        info = DatasetInfo.load(tmp_path / "s6" / split)
        assert info.num_samples == (20 if split == "train" else 5) and info.options["holdout"] == [
            ["red", "circle"]
        ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["jsonl", "--input", "/nonexistent.jsonl", "--out", "OUT"],
            "input file /nonexistent.jsonl does not exist",
        ),
        (
            [
                "refcoco",
                "--refs",
                "REFS_P",
                "--instances",
                "X",
                "--images",
                "X",
                "--split",
                "val",
                "--out",
                "OUT",
            ],
            "is a pickle",
        ),
        (["synthetic", "--out", "OUT", "--num", "3", "--split-holdout", "pink:circle"], "bad hold-out pair"),
        (["synthetic", "--out", "OUT"], "the following arguments are required: --num"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    _refer_fixture(tmp_path)
    argv = [
        a.replace("OUT", str(tmp_path / "out")).replace("REFS_P", str(tmp_path / "refs(unc).p")) for a in argv
    ]
    with pytest.raises(SystemExit) as info:
        run_cli(make_shards_main, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_real_photo_roundtrip(tmp_path, tokenizer):
    from vlcoattn.assets import sample_photo

    photo = sample_photo("china")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "china.jpg").write_bytes(photo.read_bytes())
    w, h = Image.open(photo).size
    (tmp_path / "d.jsonl").write_text(
        json.dumps(
            {
                "image": "china.jpg",
                "text": "the roof",
                "task": "ground",
                "boxes": [[w * 0.2, h * 0.1, w * 0.6, h * 0.5]],
            }
        )
    )
    convert_jsonl(tmp_path / "d.jsonl", tmp_path / "img", tmp_path / "out", progress=False)
    (batch,) = list(build_loader(str(tmp_path / "out"), processor_for(tokenizer, 64),
                                 LoaderConfig(batch_size=1)))
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert np.allclose(
        invert_boxes(batch["boxes"][0], batch["letterbox"][0]).numpy(),
        [w * 0.2, h * 0.1, w * 0.6, h * 0.5],
        atol=1.0,
    )


def test_converters_write_a_label_sorted_input_in_a_seeded_shuffled_order(tmp_path):
    """A CSV sorted by label (as many public ones are) must not become single-class shards: the default
    write order is a seeded shuffle (the same on every run); ``shuffle=False`` keeps the input order."""
    src = tmp_path / "sorted.csv"
    src.write_text("text,label\n" + "".join(f"item {i},{'ab'[i >= 50]}\n" for i in range(100)))

    def labels(out):
        shards = [str(x) for x in sorted(out.glob("shard-*.tar"))]
        return [json.loads(s["json"])["label"] for s in wds.WebDataset(shards, shardshuffle=False)]

    convert_textcls(src, tmp_path / "kept", progress=False, shuffle=False)
    assert labels(tmp_path / "kept") == ["a"] * 50 + ["b"] * 50
    convert_textcls(src, tmp_path / "mixed", progress=False)
    mixed = labels(tmp_path / "mixed")
    assert sorted(mixed) == labels(tmp_path / "kept") and 10 < mixed[:50].count("a") < 40
    convert_textcls(src, tmp_path / "again", progress=False)
    assert labels(tmp_path / "again") == mixed  # seeded
    with pytest.raises(SystemExit) as info:
        run_cli(make_shards_main, ["textcls", "--input", str(src), "--out", str(tmp_path / "cli"), "--no-progress",
                                   "--no-shuffle"])
    assert info.value.code == 0 and labels(tmp_path / "cli") == labels(tmp_path / "kept")


def test_the_loader_warns_when_batches_are_far_from_the_declared_label_mix(tmp_path, tokenizer, caplog):
    """Label-sorted shards (written with --no-shuffle) read in order: one class per window of batches,
    far from dataset.json's 50/50, is one warning naming the cause; the shuffled write gives none."""
    src = tmp_path / "sorted.csv"
    src.write_text("text,label\n" + "".join(f"item {i},{'ab'[i >= 600]}\n" for i in range(1200)))
    convert_textcls(src, tmp_path / "kept", progress=False, shuffle=False)
    convert_textcls(src, tmp_path / "mixed", progress=False)
    assert DatasetInfo.load(tmp_path / "kept").label_counts == [600, 600]
    for name, warns in (("kept", True), ("mixed", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vlcoattn.data.read.loader"):
            for _ in build_loader(str(tmp_path / name), tokenizer, LoaderConfig(batch_size=32, shuffle=False)):
                pass
        warnings = [r.getMessage() for r in caplog.records if "look sorted" in r.getMessage()]
        assert len(warnings) == (1 if warns else 0), warnings
        if warns:
            assert "labels a 100%" in warnings[0] and "declare a 50%, b 50%" in warnings[0]
