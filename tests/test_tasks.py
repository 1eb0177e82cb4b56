"""The task registry: every task is whole, batches become the right inputs and item counts, unknown
names fail with one line, and no code outside the registry branches on a task name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from vlcoattn.data import Collator
from vlcoattn.infer import Predictor
from vlcoattn.tasks import (
    TaskSpec,
    check_batchable,
    get_task,
    register_task,
    sample_task_names,
    task_names,
    task_of_model,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vlcoattn"


class _Pixels:
    """An image processor stand-in: the collator only normalizes with it."""

    @staticmethod
    def normalize(pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float()


def _samples() -> list[dict]:
    """Two VQA rows (one answer out of the vocabulary), one grounding row, one text-only cls / lm each."""
    image = {"pixels": torch.zeros(3, 8, 8, dtype=torch.uint8), "letterbox": torch.ones(8)}
    return [
        {"key": "q0", "task": "vqa", "text": "what color?", "answers": ["red"] * 2 + ["blue"] * 8, "meta": {}, **image},
        {"key": "r0", "task": "ground", "text": "the red cube", "box": torch.tensor([0.5, 0.5, 0.2, 0.4]),
         "meta": {}, **image},
        {"key": "q1", "task": "vqa", "text": "how many?", "answers": ["7"], "meta": {}, **image},
    ]


def test_every_task_is_whole(minilm_tokenizer):
    """Each registered task names a model class that loads, a predictor, and sample tasks that are
    registered single tasks; the model class maps back to its task."""
    assert set(task_names()) == {"vqa", "ground", "vqa+ground", "cls", "lm", "phrase", "vqa+ground+phrase"}
    assert sample_task_names() == ("vqa", "ground", "cls", "lm", "phrase")
    for name in task_names():
        spec = get_task(name)
        model_class = spec.model_class_object()
        assert issubclass(model_class, PreTrainedModel), name
        assert task_of_model(model_class) is spec
        assert issubclass(spec.predictor_class(), Predictor), name
        assert all(get_task(t).parts == () for t in spec.sample_tasks), name
        for unit in spec.units:
            assert unit.collate and unit.targets and unit.count_items and unit.score, (name, unit.name)
            assert unit.hub_pipeline_tag and unit.headline_metrics and unit.summary and unit.usage, (name, unit.name)
    assert get_task("classify") is get_task("cls") and get_task("generate") is get_task("lm")


def test_a_mixed_image_batch_becomes_the_multitask_inputs_and_counts(minilm_tokenizer):
    collator = Collator(minilm_tokenizer, _Pixels(), answer_vocab=["red", "blue"])
    batch = collator(_samples())
    spec = get_task("vqa+ground")
    inputs = spec.model_inputs(batch, "cpu")
    assert inputs["answer_mask"].tolist() == [True, False, True]
    assert inputs["box_mask"].tolist() == [False, True, False]
    # official VQA scores of 10 annotators, min(matches / 3, 1) over the 10 leave-one-out subsets of 9:
    # "red" (2 matches) 8 x 2/3 + 2 x 1/3 -> 0.6; "blue" (8) -> 1
    assert inputs["labels"][0].tolist() == pytest.approx([0.6, 1.0])
    assert inputs["labels"][2].tolist() == [0.0, 0.0]  # "7" is not in the vocabulary
    assert inputs["boxes"][1].tolist() == pytest.approx([0.5, 0.5, 0.2, 0.4])
    assert {"pixel_values", "token_type_ids"} <= inputs.keys()
    assert spec.items(batch) == {"vqa": 2, "ground": 1}
    assert spec.num_items_argument(spec.items(batch)) == {"vqa": 2, "ground": 1}
    vqa = get_task("vqa")
    assert vqa.num_items_argument(vqa.items(batch)) == 2 and "boxes" not in vqa.model_inputs(batch, "cpu")
    assert "labels" not in get_task("ground").model_inputs(batch, "cpu", targets=False)
    with pytest.raises(ValueError, match="task 'ground' needs images"):
        get_task("ground").model_inputs({k: v for k, v in batch.items() if k != "pixel_values"}, "cpu")


def test_text_batches_become_cls_and_lm_inputs_and_counts(minilm_tokenizer):
    texts = ["a short one", "a somewhat longer text here"]
    samples = [{"key": str(i), "task": "lm", "text": t, "meta": {}} for i, t in enumerate(texts)]
    batch = Collator(minilm_tokenizer)(samples)
    lm = get_task("lm")
    inputs = lm.model_inputs(batch, "cpu")
    assert "token_type_ids" not in inputs and "pixel_values" not in inputs
    lengths = [len(minilm_tokenizer(t)["input_ids"]) for t in texts]
    assert lm.items(batch) == {"lm": sum(n - 1 for n in lengths)}  # every token after the first is a target
    assert lm.num_items_argument(lm.items(batch)) == sum(n - 1 for n in lengths)
    labelled = [{**s, "task": "cls", "label": label} for s, label in zip(samples, ["b", "a"])]
    batch = Collator(minilm_tokenizer, label_vocab=["a", "b"])(labelled)
    cls = get_task("cls")
    assert cls.model_inputs(batch, "cpu")["labels"].tolist() == [1, 0] and cls.items(batch) == {"cls": 2}
    assert cls.model_config((), ["a", "b"])["id2label"] == {0: "a", 1: "b"}
    with pytest.raises(ValueError, match="at least 2 labels"):
        cls.model_config((), ["a"])
    with pytest.raises(ValueError, match="no answer vocabulary"):
        get_task("vqa+ground").model_config([], [])


def test_unknown_task_names_and_duplicates_are_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown task 'detect'; the registered tasks are: vqa, ground, "
                                         r"vqa\+ground, cls, lm, phrase, vqa\+ground\+phrase, classify \(= cls\), "
                                         r"generate \(= lm\), "
                                         r"phrase_grounding \(= phrase\)"):
        get_task("detect")
    with pytest.raises(ValueError, match="'cls' is registered already"):
        register_task(TaskSpec(name="cls", model_class="x:y", predictor="x:y"))
    with pytest.raises(ValueError, match="'classify' is registered already"):
        register_task(TaskSpec(name="topic", model_class="x:y", predictor="x:y", aliases=("classify",)))
    assert "topic" not in task_names()


def test_tasks_whose_targets_share_a_batch_field_cannot_mix():
    check_batchable(["vqa", "ground", "vqa"])
    check_batchable(["cls", "vqa"])
    with pytest.raises(ValueError, match="a batch mixes 'cls' and 'lm' samples, whose 'labels' differ"):
        check_batchable(["lm", "cls"])


def test_the_registry_imports_only_light_modules_and_each_layer_imports_alone():
    """The registry names models, predictors and metrics lazily (inside its hooks), so data/, eval/,
    train/ and infer/ can import it at module level and the layers keep importing only downward."""
    light = {"__future__", "importlib", "collections.abc", "dataclasses", "typing", "torch", "torch.nn.functional"}
    for path in sorted((PACKAGE / "tasks").glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only
            if isinstance(node, ast.ImportFrom):
                assert node.level == 1 or node.module in light, (path.name, node.module)
            elif isinstance(node, ast.Import):
                assert all(a.name in light for a in node.names), (path.name, [a.name for a in node.names])
    for module in ("tasks", "data", "data.read", "data.write"):
        proc = subprocess.run([sys.executable, "-c", f"import vlcoattn.{module}"], capture_output=True, text=True,
                              cwd=ROOT)
        assert proc.returncode == 0, (module, proc.stderr[-2000:])


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules that the package file ``path`` imports, anywhere in it."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            names.add(".".join((*base, node.module or "")).rstrip("."))
    return names


def test_the_data_read_side_and_the_shared_format_never_import_the_write_side():
    """data/read/ (shard reading, loader, pipeline, transforms) stands without data/write/ (shard
    writer, converters, generator), and the shared format in data/ without either side."""
    data = PACKAGE / "data"
    for path in sorted(data.rglob("*.py")):
        side = path.relative_to(data).parts[0]
        if side == "write" or path == data / "__init__.py":
            continue
        banned = ("vlcoattn.data.write",) if side == "read" else ("vlcoattn.data.write", "vlcoattn.data.read")
        wrong = sorted(m for m in imported_modules(path) if m.startswith(banned))
        assert not wrong, (path.relative_to(ROOT).as_posix(), wrong)


# ------------------------------------------------------------------------------ task-name branches

TASK_WORDS = {"vqa", "ground", "vqa+ground", "cls", "lm", "classify", "generate", "phrase", "phrase_grounding",
              "vqa+ground+phrase"}
# the comparisons with a task-name string allowed outside vlcoattn/tasks/: (folder, words in the source, reason)
ALLOWED = [
    ("models/", "pooling", '"cls" is the VQA head\'s pooling mode there (the [CLS] token), not a task'),
]


def _words(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def task_name_branches(root: Path) -> list[tuple[str, str]]:
    """(file, source) of every comparison with a task-name string (``t == "vqa"``, ``"ground" in
    tasks``, ``task in ("cls", "lm")``) in the package outside the registry."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("tasks/"):
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare) and any(_words(n) & TASK_WORDS for n in (node.left, *node.comparators)):
                found.append((rel, ast.get_source_segment(source, node)))
    return found


def test_the_scan_finds_task_name_branches(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "spec.py").write_text('ok = task == "vqa"\n')
    (tmp_path / "a.py").write_text('x = 1 if t == "ground" else 2\ny = "lm" in tasks\nz = task in ("cls", "lm")\n'
                                   'w = mode == "mean"\n')
    found = sorted(s for _, s in task_name_branches(tmp_path))
    assert found == ['"lm" in tasks', 't == "ground"', 'task in ("cls", "lm")']


def test_no_code_outside_the_registry_branches_on_a_task_name():
    assert len(ALLOWED) <= 3
    extra = [(f, s) for f, s in task_name_branches(PACKAGE)
             if not any(f.startswith(folder) and words in s for folder, words, _ in ALLOWED)]
    assert not extra, f"ask the task registry (vlcoattn.tasks) instead of comparing task names: {extra}"
