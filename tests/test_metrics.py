"""Evaluation metrics vs hand-computed cases, sklearn, torchvision, and a real 2-rank gloo group."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score, f1_score
from torchvision.ops import box_iou

from vlcoattn.eval import (
    MetricAccumulator,
    box_iou_xyxy,
    classification_metrics,
    grounding_metrics,
    normalize_answer,
    perplexity,
    vqa_accuracy,
)

# ----------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        # number words -> digits (whole words only)
        ("Two", "2"),
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("someone", "someone"),
        # articles a / an / the, whole words only
        ("The Cat", "cat"),
        ("a dog and an apple", "dog and apple"),
        ("anthem theme", "anthem theme"),
        # punctuation: replaced by a space inside a word, dropped next to a space
        ("Yes!", "yes"),
        ("t-shirt", "t shirt"),
        ("black / white", "black white"),
        ("hello, world", "hello world"),
        ("(left)", "left"),
        # a digit,digit anywhere -> every punctuation mark is dropped, not spaced
        ("1,000", "1000"),
        ("10,000 people!", "10000 people"),
        ("1,5-2", "152"),
        # periods: kept only before a digit
        ("3.5", "3.5"),
        ("dog.", "dog"),
        ("a.m.", "am"),
        (".5", ".5"),
        # contractions table (applied after lower-casing: the official "Im"/"Ive" keys never match)
        ("dont", "don't"),
        ("Whats up", "what's up"),
        ("cant", "can't"),
        ("yall", "y'all"),
        ("Im", "im"),
        ("somebody'd", "somebodyd"),
        # apostrophes and colons are not in the official punctuation list
        ("don't", "don't"),
        ("3:30", "3:30"),
        # whitespace
        ("  red \t and\nblue  ", "red and blue"),
        ("", ""),
    ],
)
def test_normalize_answer_official_rules(raw, norm):
    assert normalize_answer(raw) == norm
    assert normalize_answer(norm) == norm  # idempotent: re-normalizing ground truth changes nothing


def _ten(match: str, n_match: int) -> list[str]:
    return [match] * n_match + [f"other{i}" for i in range(10 - n_match)]


@pytest.mark.parametrize(
    ("n_match", "expected"),
    [
        (0, 0.0),
        (1, 0.3),  # 9 subsets keep the match: 9 * 1/3 / 10
        (2, 0.6),  # (8 * min(2/3, 1) + 2 * min(1/3, 1)) / 10
        (3, 0.9),  # (7 * 1 + 3 * 2/3) / 10
        (4, 1.0),  # every subset keeps >= 3 matches
        (7, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out_hand_cases(n_match, expected):
    assert vqa_accuracy("2", _ten("2", n_match)) == pytest.approx(expected, abs=1e-12)


def _official_loop(prediction: str, answers: list[str]) -> float:
    """vqaEval.py's loop written out: mean over leave-one-out subsets of min(#matching / 3, 1)."""
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    accs = [min(1.0, sum(a == pred for a in gts[:i] + gts[i + 1 :]) / 3) for i in range(len(gts))]
    return sum(accs) / len(accs)


def test_vqa_accuracy_equals_the_official_loop_with_normalization():
    rng = random.Random(0)
    pool = ["Two", "2", "two.", "the dog", "Dog", "a dog!", "yes", "no", "1,000", "1000"]
    for _ in range(200):
        answers = [rng.choice(pool) for _ in range(10)]
        prediction = rng.choice([*pool, "cat"])
        assert vqa_accuracy(prediction, answers) == pytest.approx(_official_loop(prediction, answers))
    # "Two" / "2" / "two." are all "2": 3 matching annotators -> 0.9
    assert vqa_accuracy("TWO", ["Two", "2", "two.", *["3"] * 7]) == pytest.approx(0.9)


def test_vqa_accuracy_exact_match_without_ten_answers():
    assert vqa_accuracy("Blue.", ["blue"]) == 1.0
    assert vqa_accuracy("red", ["blue"]) == 0.0
    assert vqa_accuracy("no", ["yes", "yes", "no"]) == 1.0  # any answer, not a vote
    assert vqa_accuracy("the cube", ["cube", *["sphere"] * 10]) == 1.0  # 11 answers: exact match too
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("yes", [])


# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),  # identical
        ([0, 0, 1, 1], [2, 2, 3, 3], 0.0),  # disjoint
        ([0, 0, 1, 1], [1, 0, 2, 1], 0.0),  # touching edge: zero-width intersection
        ([0, 0, 4, 4], [1, 1, 3, 3], 0.25),  # contained: 4 / 16
        ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7),  # partial: 1 / (4 + 4 - 1)
        ([0, 0, 2, 1], [0, 0, 1, 1], 0.5),  # exactly the Acc@0.5 threshold
        ([1, 1, 1, 1], [0, 0, 2, 2], 0.0),  # zero-area prediction inside the target
        ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),  # both zero-area: empty union -> 0, not NaN
        ([0, 0, 0, 5], [0, 0, 0, 5], 0.0),  # zero-width line
        ([2, 2, 0, 0], [0, 0, 2, 2], 0.0),  # inverted box counts as empty
    ],
)
def test_box_iou_edge_cases(pred, target, expected):
    iou = box_iou_xyxy(torch.tensor([pred], dtype=torch.float32), torch.tensor([target], dtype=torch.float32))
    assert iou.shape == (1,)
    assert not torch.isnan(iou).any()
    assert iou.item() == pytest.approx(expected)
    assert box_iou_xyxy(torch.tensor(pred), torch.tensor(target)).item() == pytest.approx(
        expected
    )  # int boxes


def test_box_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(64, 2, generator=g, dtype=torch.float64) * 10
    wh = torch.rand(64, 2, generator=g, dtype=torch.float64) * 5 + 0.1
    a = torch.cat([xy, xy + wh], 1)
    b = a + torch.randn(64, 4, generator=g, dtype=torch.float64)
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 0.1)  # keep b valid
    torch.testing.assert_close(box_iou_xyxy(a, b), box_iou(a, b).diagonal())
    torch.testing.assert_close(
        box_iou_xyxy(a.view(8, 8, 4), b.view(8, 8, 4)), box_iou(a, b).diagonal().view(8, 8)
    )
    with pytest.raises(ValueError, match="same shape"):
        box_iou_xyxy(a, b[:3])


def test_grounding_metrics_hand_case():
    pred = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 2], [0, 0, 1, 1.0]])
    true = torch.tensor([[0, 0, 2, 2], [0, 0, 1, 1], [1, 1, 3, 3], [5, 5, 6, 6.0]])
    m = grounding_metrics(pred, true)  # IoUs 1, 0.5, 1/7, 0
    assert m["acc@0.5"] == pytest.approx(0.5)
    assert m["mean_iou"] == pytest.approx((1 + 0.5 + 1 / 7 + 0) / 4)
    with pytest.raises(ValueError, match="at least one"):
        grounding_metrics(torch.zeros(0, 4), torch.zeros(0, 4))


# ----------------------------------------------------------------------------- classification


def test_classification_hand_case_and_sklearn():
    true = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    # class 0: TP 1, FP 1, FN 1 -> F1 2/4; class 1: TP 2, FP 1 -> 4/5; class 2: TP 1, FN 1 -> 2/3;
    # class 3 never occurs -> left out of the macro average
    m = classification_metrics(pred, true, num_classes=4)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"))


def test_macro_f1_matches_sklearn_random():
    g = torch.Generator().manual_seed(0)
    for n, c in [(1, 3), (7, 5), (50, 10), (200, 4)]:
        true = torch.randint(0, c, (n,), generator=g)
        pred = torch.where(torch.rand(n, generator=g) < 0.5, true, torch.randint(0, c, (n,), generator=g))
        m = classification_metrics(pred, true, num_classes=c + 3)  # some classes absent from both
        assert m["accuracy"] == pytest.approx(accuracy_score(true, pred))
        assert m["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro"))
    # a class only ever predicted counts in the average with F1 0
    assert classification_metrics([1, 1], [0, 1], 3)["macro_f1"] == pytest.approx(
        f1_score([0, 1], [1, 1], average="macro")
    )


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        classification_metrics([3], [0], num_classes=3)
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        classification_metrics([0, 1], [0], num_classes=3)
    with pytest.raises(ValueError, match="at least one"):
        classification_metrics([], [], num_classes=3)


# ----------------------------------------------------------------------------- LM


def test_perplexity():
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError, match="positive number of tokens"):
        perplexity(1.0, 0)


# ----------------------------------------------------------------------------- accumulator


def _samples() -> list[tuple]:
    """A deterministic mixed-task evaluation set."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(16):
        kind = (i // 2) % 4  # both ranks of a [rank::2] split get every task
        if kind == 0:
            qtype = ["count", "color", "shape"][i % 3]
            out.append(("vqa", "3" if i % 2 else "Two", _ten("2", i % 5 + 1), qtype))
        elif kind == 1:
            box = torch.tensor([[0.0, 0.0, 2.0, 2.0]]) + (0.3 + 0.6 * (i % 3)) * torch.rand(1, 4, generator=g)
            out.append(("box", box, torch.tensor([[0.0, 0.0, 2.0, 2.0]])))
        elif kind == 2:
            out.append(("cls", torch.tensor([i % 3, (i + 1) % 3]), torch.tensor([i % 3, i % 3])))
        else:
            out.append(("lm", 2.5 * i, i + 1))
    return out


def _accumulate(samples: list[tuple]) -> MetricAccumulator:
    acc = MetricAccumulator(num_classes=5)
    for kind, *args in samples:
        {"vqa": acc.add_vqa, "box": acc.add_box, "cls": acc.add_class, "lm": acc.add_lm}[kind](*args)
    return acc


def test_accumulator_equals_the_metric_functions():
    samples = _samples()
    got = _accumulate(samples).all_reduce().compute()  # not distributed: all_reduce is a no-op
    vqa = [(vqa_accuracy(p, a), q) for kind, p, a, q in (s for s in samples if s[0] == "vqa")]
    assert got["vqa_acc"] == pytest.approx(sum(s for s, _ in vqa) / len(vqa))
    for qtype in ("count", "color", "shape"):
        scores = [s for s, q in vqa if q == qtype]
        assert got[f"vqa_acc/{qtype}"] == pytest.approx(sum(scores) / len(scores))
    boxes = [s for s in samples if s[0] == "box"]
    expected = grounding_metrics(torch.cat([b[1] for b in boxes]), torch.cat([b[2] for b in boxes]))
    assert got["acc@0.5"] == pytest.approx(expected["acc@0.5"])
    assert got["mean_iou"] == pytest.approx(expected["mean_iou"])
    cls = [s for s in samples if s[0] == "cls"]
    expected = classification_metrics(torch.cat([c[1] for c in cls]), torch.cat([c[2] for c in cls]), 5)
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    assert got["macro_f1"] == pytest.approx(expected["macro_f1"])
    lm = [s for s in samples if s[0] == "lm"]
    assert got["perplexity"] == pytest.approx(math.exp(sum(s[1] for s in lm) / sum(s[2] for s in lm)))
    assert len(got) == 1 + 3 + 2 + 2 + 1


def test_accumulator_hand_case_and_guards():
    acc = MetricAccumulator()
    assert acc.compute() == {}  # no samples: no metrics
    assert acc.add_vqa("Two", _ten("2", 2), qtype="count") == pytest.approx(0.6)
    assert acc.add_vqa("red", ["red"], qtype="color") == 1.0
    assert acc.add_vqa("no", ["yes"]) == 0.0  # no question type: only in the overall score
    ious = acc.add_box(torch.tensor([[0, 0, 2, 1], [0, 0, 1, 1]]), torch.tensor([[0, 0, 1, 1], [2, 2, 3, 3]]))
    assert ious.tolist() == [0.5, 0.0]
    assert acc.compute() == pytest.approx(
        {"vqa_acc": 1.6 / 3, "vqa_acc/color": 1.0, "vqa_acc/count": 0.6, "acc@0.5": 0.5, "mean_iou": 0.25}
    )
    with pytest.raises(ValueError, match="num_classes"):
        acc.add_class([0], [0])
    acc.all_reduce()
    with pytest.raises(RuntimeError, match="already"):
        acc.all_reduce()


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        acc = _accumulate(_samples()[rank::world_size])  # each rank: a disjoint shard of the data
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(acc.all_reduce().compute(), f)
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_gloo_ranks_equal_one_process(tmp_path):
    # fork: the children inherit the imports (a spawned child would spend seconds re-importing torch,
    # transformers, ...); each still runs its own gloo process group over the init file
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method=start_method
    )
    single = _accumulate(_samples()).compute()
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.keys() == single.keys()  # question types seen only on one rank are merged
        assert got == pytest.approx(single, rel=1e-12)


def test_answer_prior_baselines_hand_case():
    from vlcoattn.eval.baselines import AnswerPriorBaseline

    train = [
        {"task": "vqa", "text": "Is there a red cube?", "answers": ["yes"] * 3, "meta": {"type": "exists"}},
        {"task": "vqa", "text": "is there a red cube", "answers": ["yes"], "meta": {"question_type": "exists"}},
        {"task": "vqa", "text": "How many balls?", "answers": ["2"] * 10, "meta": {"type": "count"}},
        {"task": "vqa", "text": "How many cubes?", "answers": ["3"] * 2, "meta": {"question_type": "count"}},  # an older shard's key
        {"task": "ground", "text": "the red cube", "boxes": [[0, 0, 1, 1]]},
    ]
    answer, question = AnswerPriorBaseline(train, "answer"), AnswerPriorBaseline(train, "question")
    assert answer.predict("Is there a red cube?") == "2"  # the most frequent answer overall
    assert question.predict("IS there a red  cube?") == "yes"  # same question, case and spaces aside
    assert question.predict("How many cones?", "count") == "2"  # unseen question: its type's answer
    assert question.predict("What is it?", "query_color") == "2"  # unseen type: the overall answer
    batch = {"tasks": ["vqa", "vqa", "ground"], "texts": ["How many cubes?", "Is there a red cube?", "x"],
             "answers": [["3"], ["no"], []], "meta": [{"type": "count"}, {"type": "exists"}, {}]}
    question.add(batch)
    metrics = question.compute()
    assert metrics["question_prior/vqa_acc"] == pytest.approx(0.5)  # "3" right, "yes" wrong
    assert metrics["question_prior/vqa_acc/count"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no VQA answers"):
        AnswerPriorBaseline(train[-1:], "question")
