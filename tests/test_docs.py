"""The docs stay true: every Python block of README.md and docs/ runs, tables come from their one
source, and relative links point at files that exist."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from vlcoattn import VLCoAttnConfig, VLCoAttnForMultitask, VLCoAttnForPhraseGrounding, VLCoAttnProcessor
from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.data import SyntheticConfig, parse_holdout, write_synthetic
from vlcoattn.loading import write_task_file
from vlcoattn.text import CooBertConfig, CooBertForCausalLM, CooBertForSequenceClassification
from vlcoattn.text.convert import convert_bert_dir
from vlcoattn.train.job_config import JobConfig, RunConfig
from vlcoattn.train.model_card import write_model_card

from helpers import FakeHub

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_DOCS = [*DOCS, ROOT / "benchmarks" / "RESULTS.md"]  # the docs whose bash blocks name tool calls
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)

sys.path.insert(0, str(ROOT / "benchmarks"))
import include_tables  # noqa: E402


def _tiny_text(tok, **kw) -> CooBertConfig:
    return CooBertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, shared_key_dim=16, max_position_embeddings=64, **kw)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """What the doc examples name, built small: runs/demo/final (and runs/ground, runs/vqa: model dirs as the
    trainer writes them), runs/phrase, runs/coobert-minilm-k192 (a real conversion), runs/bbc-cls, runs/lm, shards (and
    shards/vqa2 in place of a VQA v2 conversion), data/clevr-lite-4000, corpus/*.txt, photo.jpg, hf/vqa. Built
    once; each doc runs in its own copy (``workspace``)."""
    root = tmp_path_factory.mktemp("docs")
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    answers = ["red", "blue", "yes", "no", "2"]
    config = VLCoAttnConfig(text_config=_tiny_text(tok), vision_config=dict(backbone="test_resnet", image_size=[64, 64]),
                            coattention_config=dict(num_layers=1), heads_config=dict(answer_vocab=answers))
    model = VLCoAttnForMultitask(config)
    for name in ("demo/final", "ground", "vqa"):
        out = root / "runs" / name
        model.save_pretrained(out)
        VLCoAttnProcessor.for_model(model, tok, max_text_len=32).save_pretrained(out)
        write_task_file(out, "vqa+ground")
    phrase = VLCoAttnForPhraseGrounding(config)  # runs/phrase: a phrase grounding model (docs/inference.md)
    phrase.save_pretrained(root / "runs" / "phrase")
    VLCoAttnProcessor.for_model(phrase, tok, max_text_len=32).save_pretrained(root / "runs" / "phrase")
    write_task_file(root / "runs" / "phrase", "phrase")
    for name, lm in (("bbc-cls", CooBertForSequenceClassification(_tiny_text(tok, num_labels=2,
                                                                           id2label={0: "business", 1: "sport"}))),
                     ("lm", CooBertForCausalLM(_tiny_text(tok)))):
        lm.save_pretrained(root / "runs" / name)
        tok.save_pretrained(root / "runs" / name)
    convert_bert_dir(minilm_dir(), root / "runs" / "coobert-minilm-k192", shared_key_dim=192)
    write_synthetic(root / "shards" / "clevr", 40, seed=0, progress=False,
                    config=SyntheticConfig(image_size=64, holdout=parse_holdout("cogent")))
    job = JobConfig(task="vqa+ground", run=RunConfig(dir="runs/demo"))
    job.data.train = [str(root / "shards" / "clevr" / "train")]
    write_model_card(root / "runs" / "demo" / "final", job, location="runs/demo/final")  # as the trainer does
    shutil.copytree(root / "shards" / "clevr", root / "data" / "clevr-lite-4000")
    for name in ("vqav2", "refcoco"):
        shutil.copytree(root / "shards" / "clevr" / "train", root / "shards" / name / "train")
    shutil.copytree(root / "shards" / "clevr" / "val", root / "shards" / "vqa2")  # README: what vqa2 --out wrote
    shutil.copy(sample_photo("coffee"), root / "photo.jpg")
    shutil.copy(sample_photo("chelsea"), root / "b.png")
    (root / "corpus").mkdir()
    for i, text in enumerate(["The market rose today.\n\nShares in the bank fell.", "A new film opened."]):
        (root / "corpus" / f"{i}.txt").write_text(text)
    (root / "pairs.jsonl").write_text(json.dumps({"image": "photo.jpg", "text": "the cup"}) + "\n")
    _save_hf_vqa(root)
    return root


def _save_hf_vqa(root: Path) -> None:
    """hf/vqa: a DatasetDict as save_to_disk writes it, VQA v2-style columns (what docs/data.md converts)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                  "answers": datasets.List({"answer": datasets.Value("string")})})
    rows = {"image": [str(root / "photo.jpg"), str(root / "b.png")], "question": ["What is in the cup?", "What is it?"],
            "answers": [[{"answer": "coffee"}] * 3, [{"answer": "cat"}] * 3]}
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": split, "validation": split}).save_to_disk(str(root / "hf" / "vqa"))


SHARED = ("runs/coobert-minilm-k192",)  # large and only read by the docs: linked into each copy, not copied


def _stat(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(f.relative_to(folder)): (f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob("*")}


@pytest.fixture
def workspace(pristine, tmp_path):
    """A fresh copy of the workspace for one doc: what a doc writes (``runs/ground`` in models.md, say)
    is never what another doc reads, whatever order the tests run in. The ``SHARED`` dirs are links;
    a doc that writes into one fails here."""
    root = tmp_path / "workspace"
    shared = {pristine / rel for rel in SHARED}
    shutil.copytree(pristine, root, ignore=lambda folder, names: [n for n in names if Path(folder, n) in shared])
    for rel in SHARED:
        (root / rel).symlink_to(pristine / rel, target_is_directory=True)
    before = {rel: _stat(pristine / rel) for rel in SHARED}
    yield root
    assert {rel: _stat(pristine / rel) for rel in SHARED} == before, f"a doc wrote into {SHARED}: copy it instead"


@pytest.mark.parametrize("doc", [d for d in DOCS if PYTHON_BLOCK.search(d.read_text())], ids=lambda d: d.name)
def test_every_python_block_of_the_docs_runs(doc, workspace, monkeypatch):
    """A doc's blocks run in order in one namespace (a later block may use an earlier one's names), in a
    folder holding the files they name."""
    monkeypatch.chdir(workspace)
    FakeHub(monkeypatch)  # what the docs push to the Hub stays here
    namespace: dict = {"__name__": f"doc_{doc.stem}"}
    for i, block in enumerate(PYTHON_BLOCK.findall(doc.read_text())):
        exec(compile(block, f"{doc.name} python block {i + 1}", "exec"), namespace)


def test_every_included_table_matches_its_source():
    stale = [p for p in include_tables.docs() if include_tables.included(p.read_text()) != p.read_text()]
    assert not stale, f"run python benchmarks/include_tables.py: {stale}"


def test_relative_links_point_at_files_that_exist():
    missing = []
    for doc in [*DOCS, ROOT / "benchmarks" / "RESULTS.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_no_reference_to_notes_that_do_not_ship():
    """The design notes the code relies on live in docs/design.md, not in an unshipped DESIGN.md."""
    found = []
    for path in [*ROOT.glob("vlcoattn/**/*.py"), *DOCS]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"DESIGN(\.md| §)", line):
                found.append(f"{path.relative_to(ROOT)}:{n}")
    assert not found, found
    assert os.path.isfile(ROOT / "docs" / "design.md")


class _Parsed(Exception):
    """Raised by the patched parse_args: the command line parsed, stop before running anything."""

    def __init__(self, parsed):
        super().__init__()
        self.parsed = parsed


def _bash_blocks(doc: Path) -> list[str]:
    """The doc's bash blocks, continuation lines joined."""
    return [block.replace("\\\n", " ") for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S)]


def _tool_calls(block: str) -> list[tuple[str, list[str]]]:
    """(tool, argv) of every vlcoattn tool invoked in a bash block: ``python tools/X.py``, ``vlcoattn-X`` or
    ``torchrun ... tools/X.py``; comments dropped, words not expanded."""
    found = []
    for line in block.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            for i, word in enumerate(words):
                m = re.fullmatch(r"tools/(\w+)\.py|vlcoattn-([\w-]+)", word)
                if m:
                    found.append(((m[1] or m[2]).replace("-", "_"), words[i + 1:]))
                    break
    return found


def _documented_commands() -> list[tuple[str, str, list[str]]]:
    """(doc, tool, argv) of every tool call in the bash blocks of README, docs/ and RESULTS.md."""
    return [(doc.name, tool, argv) for doc in COMMAND_DOCS
            for block in _bash_blocks(doc) for tool, argv in _tool_calls(block)]


COMMANDS = _documented_commands()


@pytest.mark.parametrize("doc,tool,argv", COMMANDS, ids=[f"{d}:{t}:{i}" for i, (d, t, _) in enumerate(COMMANDS)])
def test_every_documented_command_line_parses_with_the_cli_of_today(doc, tool, argv, monkeypatch):
    """Each tool call in a doc's bash blocks is accepted by that tool's parser (a flag that went away fails
    here), and a training call's config + overrides load (unknown keys and bad values fail)."""
    import argparse
    import importlib

    from vlcoattn.train.config import load_config
    from vlcoattn.train.job_config import JobConfig

    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.chdir(ROOT)
    with pytest.raises(_Parsed) as parsed:
        importlib.import_module(f"vlcoattn.cli.{tool}").main(argv)
    args = parsed.value.parsed
    if tool == "train" and Path(args.config).is_file():  # "--config C" is a placeholder in the multi-node example
        load_config(JobConfig, args.config, args.overrides)


# Documented commands that are not run by the test below, and why: each reason names the test that
# covers the call instead (checked by test_every_not_run_reason_cites_a_test_that_exists).
NOT_RUN = {
    "train": "a training run takes minutes; tests/test_trainer.py::test_every_shipped_config_builds_its_model "
             "builds every shipped config's model and "
             "tests/test_trainer.py::test_a_short_demo_run_learns_the_loss_falls_and_boxes_beat_the_center_box "
             "trains configs/demo.yaml",
    "Q.json": "the user's VQA v2 files; "
              "tests/test_data_converters.py::test_vqa2_roundtrip_keeps_ten_normalized_answers "
              "converts a fixture in the official format",
    "v2_OpenEnded_mscoco_val2014_questions.json": "as Q.json",
    "refcoco/refs.json": "the user's RefCOCO files; "
                         "tests/test_data_converters.py::test_refcoco_roundtrip_one_sample_per_sentence "
                         "converts a fixture",
    "flickr30k_entities": "the user's Flickr30k Entities files; tests/test_phrase_task.py::"
                          "test_make_shards_flickr30k_writes_phrase_samples_skipping_zero_size_boxes converts "
                          "the fixtures in their formats",
    "data.jsonl": "the user's JSONL; tests/test_data_converters.py::test_jsonl_roundtrip_with_skips converts "
                  "a fixture",
    "BERT_DIR": "a placeholder; README's `--src minilm` call runs, as does "
                "tests/test_convert_bert.py::test_cli_converts_bundled_minilm",
    "shards/glyphs": "the glyphs shards are written by a `synthetic` call (below); "
                     "tests/test_probe_features.py::test_the_cli_end_to_end_with_a_held_out_split runs the probe "
                     "on CLEVR-lite shards with a held-out split",
    "synthetic": "5,000 scenes take minutes; the workspace writes CLEVR-lite with the same function, and "
                 "tests/test_data_converters.py::test_cli_all_subcommands runs the sub-command on a few scenes",
}


def test_every_not_run_reason_cites_a_test_that_exists():
    cited = [m.groups() for reason in NOT_RUN.values() for m in re.finditer(r"tests/(\w+\.py)::(\w+)", reason)]
    assert len(cited) >= 6
    missing = [f"{f}::{name}" for f, name in cited
               if not (ROOT / "tests" / f).is_file() or f"def {name}(" not in (ROOT / "tests" / f).read_text()]
    assert not missing, f"NOT_RUN cites tests that do not exist: {missing}"


OUTPUT_FLAGS = ("--out", "--output", "--dst", "--viz", "--predictions", "--show-out")


def _expand(word: str, variables: dict[str, str]) -> list[str]:
    """The shell's expansion of the words the docs use: ``$(python -c 'CODE')``, ``$NAME`` (assigned earlier in
    the block) and globs."""
    import contextlib
    import glob
    import io

    if m := re.fullmatch(r"\$\(python -c '(.*)'\)", word):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(m[1], {})
        return [out.getvalue().strip()]
    if m := re.fullmatch(r"\$(\w+)", word):
        return [variables[m[1]]]
    if any(c in word for c in "*?["):
        return sorted(glob.glob(word)) or [word]
    return [word]


def _runs(tool: str, argv: list[str]) -> bool:
    return tool not in NOT_RUN and not any(word in NOT_RUN for word in argv)


DOCS_WITH_COMMANDS = [d for d in COMMAND_DOCS
                      if any(_runs(*call) for b in _bash_blocks(d) for call in _tool_calls(b))]


@pytest.mark.parametrize("doc", DOCS_WITH_COMMANDS, ids=lambda d: d.name)
def test_every_documented_command_runs_and_writes_what_it_names(doc, workspace, monkeypatch, capsys):
    """Each doc's commands run in order, in the workspace, as its reader would type them (a later command may
    read an earlier one's output): exit code 0 and every output they name exists. NOT_RUN lists the others."""
    import importlib
    import logging

    monkeypatch.chdir(workspace)
    monkeypatch.setattr(logging.root, "handlers", [])  # the tools' basicConfig must not outlive the test
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    ran = 0
    for block in _bash_blocks(doc):
        variables = {}
        for name, value in re.findall(r"^(\w+)=(.*)$", block, re.M):
            variables[name] = _expand(shlex.split(value)[0], variables)[0]
        for tool, argv in _tool_calls(block):
            if not _runs(tool, argv):
                continue
            argv = [expanded for word in argv for expanded in _expand(word, variables)]
            code = importlib.import_module(f"vlcoattn.cli.{tool}").main(argv)
            assert code in (0, None), f"{tool} {shlex.join(argv)} exited {code}: {capsys.readouterr().err[-2000:]}"
            outputs = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in OUTPUT_FLAGS]
            missing = [o for o in outputs if not Path(o).exists()]
            assert not missing, f"{tool} {shlex.join(argv)} did not write {missing}"
            ran += 1
    assert ran > 0
