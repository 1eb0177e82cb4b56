"""Sample schema validator, dataset.json, and VQA answer normalization / scores."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from vlcoattn.data.answers import answer_scores, build_vocab, majority_answer, normalize_answer
from vlcoattn.data.schema import BAD_REASONS, DatasetInfo, SampleError, check_record, sample_problems

VALID = [
    {"task": "vqa", "text": "What color?", "answers": ["red"] * 10},
    {"task": "ground", "text": "the red square", "boxes": [[1, 2, 30, 40]], "meta": {"id": 3}},
    {"task": "cls", "text": "some news", "label": "sport"},
    {"task": "lm", "text": "plain text"},
]


@pytest.mark.parametrize("record", VALID)
def test_valid_records_pass(record):
    assert sample_problems(record, has_image=record["task"] in ("vqa", "ground"), image_size=(64, 64)) == []
    assert check_record(record) == record


@pytest.mark.parametrize(
    ("record", "kw", "reason", "words"),
    [
        ([1, 2], {}, "bad_json", "must be an object"),
        ({"text": "x"}, {}, "bad_field", "'task' must be one of"),
        ({"task": "vqa", "text": "q", "answer": "y"}, {}, "bad_field", "needs a non-empty 'answers'"),
        ({"task": "lm", "text": "   "}, {}, "empty_text", "'text' is empty"),
        ({"task": "lm", "text": 5}, {}, "bad_field", "'text' must be a string"),
        ({"task": "vqa", "text": "q"}, {}, "bad_field", "needs a non-empty 'answers'"),
        ({"task": "vqa", "text": "q", "answers": ["a", ""]}, {}, "bad_field", "non-empty strings"),
        ({"task": "ground", "text": "t"}, {}, "bad_box", "at least one box"),
        ({"task": "ground", "text": "t", "boxes": [[5, 5, 2, 9]]}, {}, "bad_box", "empty or inverted"),
        ({"task": "ground", "text": "t", "boxes": [[0, 0, 1]]}, {}, "bad_box", "must be 4 numbers"),
        ({"task": "ground", "text": "t", "boxes": [[0, 0, "a", 3]]}, {}, "bad_box", "non-numeric"),
        ({"task": "ground", "text": "t", "boxes": [[0, 0, float("nan"), 3]]}, {}, "bad_box", "non-finite"),
        (
            {"task": "ground", "text": "t", "boxes": [[10, 10, 80, 20]]},
            {"image_size": (64, 48)},
            "bad_box",
            "outside the 64x48 image",
        ),
        ({"task": "ground", "text": "t", "boxes": "0 0 1 1"}, {}, "bad_field", "'boxes' must be a list"),
        ({"task": "cls", "text": "t"}, {}, "bad_field", "needs a 'label'"),
        ({"task": "cls", "text": "t", "label": ""}, {}, "bad_field", "'label' must be a non-empty string"),
        ({"task": "lm", "text": "t", "meta": [1]}, {}, "bad_field", "'meta' must be an object"),
        (
            {"task": "vqa", "text": "q", "answers": ["a"]},
            {"has_image": False},
            "missing_image",
            "needs an image",
        ),
    ],
)
def test_each_problem_is_named(record, kw, reason, words):
    problems = sample_problems(record, **kw)
    assert problems[0][0] == reason and words in problems[0][1], problems
    with pytest.raises(SampleError) as info:
        check_record(record, **kw)
    assert info.value.reason == reason and reason in BAD_REASONS


def test_box_tolerance_and_problem_count():
    assert (
        sample_problems({"task": "ground", "text": "t", "boxes": [[-0.5, 0, 64.9, 48]]}, image_size=(64, 48))
        == []
    )
    record = {"task": "ground", "text": "", "boxes": [[3, 3, 1, 1]], "label": 5}
    with pytest.raises(SampleError, match=r"\(\+2 more problem\(s\)\)"):
        check_record(record)


def test_dataset_info_roundtrip_and_errors(tmp_path):
    info = DatasetInfo(
        source="jsonl", num_samples=3, shards=[{"file": "shard-000000.tar", "samples": 3}], tasks={"lm": 3}
    )
    (tmp_path / "dataset.json").write_text(info.to_json())
    assert DatasetInfo.load(tmp_path) == info
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DatasetInfo.load(bad)
    (bad / "dataset.json").write_text(json.dumps({"num_samples": 1}))
    with pytest.raises(ValueError, match="not a vlcoattn-shards"):
        DatasetInfo.load(bad)
    (bad / "dataset.json").write_text(json.dumps({**json.loads(info.to_json()), "surprise": 1}))
    with pytest.raises(ValueError, match=r"unexpected dataset\.json fields"):
        DatasetInfo.load(bad)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Two dogs.", "2 dogs"),
        ("the cat", "cat"),
        ("Yes!", "yes"),
        ("dont know", "don't know"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        (" red\tand blue ", "red and blue"),
        ("t-shirt", "t shirt"),
    ],
)
def test_normalize_answer_matches_the_official_rules(raw, norm):
    assert normalize_answer(raw) == norm


def _official_accuracy(candidate: str, answers: list[str]) -> float:
    """The evaluation script's loop, written out: average over leave-one-out subsets."""
    accs = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1 :]
        accs.append(min(1.0, sum(a == candidate for a in others) / 3.0))
    return sum(accs) / len(accs)


def test_answer_scores_equal_the_official_metric():
    for counts in itertools.product(range(0, 5), repeat=3):
        if sum(counts) == 0 or sum(counts) > 10:
            continue
        answers = ["yes"] * counts[0] + ["no"] * counts[1] + ["2"] * counts[2]
        answers += ["maybe"] * (10 - len(answers))
        scores = answer_scores(answers)
        for a in set(answers):
            assert scores[a] == pytest.approx(_official_accuracy(a, answers))
    assert answer_scores(["blue"]) == {"blue": 1.0}  # fewer than 10 answers: exact match
    assert answer_scores(["yes", "yes", "no"]) == {"yes": 1.0, "no": 1.0}
    assert majority_answer(["a", "b", "b", "a", "b"]) == "b"
    assert build_vocab(Counter({"b": 2, "a": 2, "c": 1}), min_count=2) == ["a", "b"]
    assert build_vocab(Counter({"b": 2, "a": 2, "c": 5}), max_size=2) == ["c", "a"]


def test_unknown_fields_from_the_wild_are_kept_under_meta_with_one_warning_per_name(caplog):
    """img2dataset writes url / caption / width / similarity beside the sample: kept, warned once, never bad."""
    import logging

    from vlcoattn.data import schema

    schema._warned_fields.discard("similarity")
    record = {"task": "lm", "text": "a dog", "url": "http://x/1.jpg", "similarity": 0.31, "meta": {"id": 7}}
    with caplog.at_level(logging.WARNING, logger="vlcoattn.data.schema"):
        kept = check_record(record)
        check_record({**record, "similarity": 0.5})
    assert kept == {"task": "lm", "text": "a dog", "meta": {"id": 7, "url": "http://x/1.jpg", "similarity": 0.31}}
    assert sum("'similarity'" in r.message for r in caplog.records) == 1
    assert sample_problems(record) == []
