"""Text-only tasks: classification / LM data splits and their errors, and generation behaviour not
covered by test_coobert_models.py (batched eos, cached sampling, an overfit LM with a trained
tokenizer, real MiniLM weights)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import webdataset as wds
import yaml
from transformers import BertModel

import vlcoattn  # noqa: F401  (registers the Auto classes)
from vlcoattn import CooBertConfig, CooBertForCausalLM
from vlcoattn.assets import bbc_news_dir
from vlcoattn.cli.make_shards import main as make_shards_main
from vlcoattn.data import (
    DatasetInfo,
    LoaderConfig,
    build_loader,
    convert_text,
    convert_text_split,
    convert_textcls,
    convert_textcls_split,
    stratified_split,
    text_records,
)
from vlcoattn.text.convert import convert_state_dict, coobert_config_from_bert, read_bert_config
from vlcoattn.text.tokenizer import train_tokenizer
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import train
from vlcoattn.utils.cli import run_cli

from helpers import assert_cached_generation_exact

BBC_COUNTS = {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}




def _labels_by_key(folder: Path) -> dict[str, str]:
    urls = [str(p) for p in sorted(folder.glob("shard-*.tar"))]
    return {s["__key__"]: json.loads(s["json"])["label"] for s in wds.WebDataset(urls, shardshuffle=False)}


def _class_tree(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / label / f"{i:03d}.txt").write_text(f"{label} text number {i}")
    return root


# ------------------------------------------------------------------------------------------ classification


@pytest.fixture(scope="module")
def bbc_split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bbc")
    convert_textcls_split(bbc_news_dir(), out, test_fraction=0.2, seed=0, progress=False)
    return out


def test_bbc_split_is_stratified_disjoint_and_recorded(bbc_split, minilm_tokenizer):
    train, test = DatasetInfo.load(bbc_split / "train"), DatasetInfo.load(bbc_split / "test")
    expected_test = {c: round(n * 0.2) for c, n in BBC_COUNTS.items()}
    expected = {"train": {c: n - expected_test[c] for c, n in BBC_COUNTS.items()}, "test": expected_test}
    for split, info in (("train", train), ("test", test)):
        assert info.options["split"] == split and info.options["seed"] == 0
        assert info.options["test_fraction"] == 0.2 and info.options["label_counts"] == expected
        assert info.label_vocab == sorted(BBC_COUNTS) and info.skipped == {}
    assert (train.num_samples, test.num_samples) == (1781, 444)
    train_labels, test_labels = _labels_by_key(bbc_split / "train"), _labels_by_key(bbc_split / "test")
    assert not set(train_labels) & set(test_labels) and len(train_labels) + len(test_labels) == 2225
    for split, labels in (("train", train_labels), ("test", test_labels)):
        assert {c: list(labels.values()).count(c) for c in BBC_COUNTS} == expected[split]
    (batch,) = list(build_loader(str(bbc_split / "test"), minilm_tokenizer,
                                 LoaderConfig(batch_size=444, shuffle=False)))
    assert torch.bincount(batch["labels"]).tolist() == list(expected_test.values())


def test_few_step_finetune_on_a_small_bbc_subset_beats_chance_on_held_out_docs(bbc_split, tmp_path):
    """25 steps x 16 articles (400 of the 1,781 training docs, first 32 tokens) from MiniLM converted at
    D~k = 192; the 444 held-out articles are 5 classes, so chance is 0.2 and the majority class 0.23."""
    cfg = {
        "task": "cls",
        "run": {"dir": str(tmp_path / "run"), "seed": 0, "progress": False},
        "model": {"convert_from": "minilm", "shared_key_dim": 192},
        "data": {"train": [str(bbc_split / "train")], "test": {"test": [str(bbc_split / "test")]},
                 "batch_size": 16, "eval_batch_size": 64, "max_text_len": 32, "shuffle_buffer": 2000},
        "optim": {"lr": 1e-4, "warmup_steps": 3, "schedule": "linear"},
        "train": {"steps": 25, "report": False},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = train(load_config(JobConfig, path))
    test = result.metrics["test"]
    assert test["accuracy"] > 0.6 and test["macro_f1"] > 0.5, test


def test_split_is_a_function_of_the_seed(tmp_path):
    _class_tree(tmp_path / "in", {"a": 7, "b": 5, "c": 2})
    tests = {}
    for name, seed in (("s0", 0), ("s0again", 0), ("s1", 1)):
        convert_textcls_split(tmp_path / "in", tmp_path / name, test_fraction=0.3, seed=seed, progress=False)
        tests[name] = sorted(_labels_by_key(tmp_path / name / "test"))
    assert tests["s0"] == tests["s0again"] and tests["s0"] != tests["s1"]
    # round(n * 0.3) per class, at least one and at most n - 1
    assert DatasetInfo.load(tmp_path / "s0" / "test").options["label_counts"]["test"] == {"a": 2, "b": 2, "c": 1}
    records = [(f"k{i}", {"task": "cls", "text": "t", "label": "ab"[i % 2]}) for i in range(10)]
    assert stratified_split(records, 0.2, 3) == stratified_split(records, 0.2, 3)


def test_textcls_bad_inputs_raise_clear_errors(tmp_path):
    _class_tree(tmp_path / "one", {"sport": 3})
    with pytest.raises(ValueError, match=r"single class folder \('sport'\).*at least two"):
        convert_textcls(tmp_path / "one", tmp_path / "o1", progress=False)
    (tmp_path / "d.csv").write_text("body,topic\nhello,greet\n")
    with pytest.raises(ValueError, match=r"needs columns 'text' and 'label', has \['body', 'topic'\]"):
        convert_textcls(tmp_path / "d.csv", tmp_path / "o2", progress=False)
    (tmp_path / "d.jsonl").write_text('{"body": "hi", "topic": "x"}\nnot json\n{"body": "yo", "label": "y"}\n')
    with pytest.raises(ValueError, match=r"no record has the field\(s\) \['text'\]; the records have "
                                         r"\['body', 'label', 'topic'\]"):
        convert_textcls(tmp_path / "d.jsonl", tmp_path / "o3", progress=False)
    info = convert_textcls(tmp_path / "d.jsonl", tmp_path / "o4", text_column="body", progress=False)
    assert info.num_samples == 1 and info.skipped == {"bad_field": 1, "bad_json": 1}
    _class_tree(tmp_path / "blank", {"a": 1, "b": 1})
    for f in (tmp_path / "blank").rglob("*.txt"):
        f.write_text("  \n")
    with pytest.raises(ValueError, match=r"no usable labelled text \(skipped \{'empty_text': 2\}\)"):
        convert_textcls(tmp_path / "blank", tmp_path / "o5", progress=False)
    _class_tree(tmp_path / "tiny", {"a": 3, "b": 1})
    with pytest.raises(ValueError, match="label 'b' has 1 item"):
        convert_textcls_split(tmp_path / "tiny", tmp_path / "o6", progress=False)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        convert_textcls_split(tmp_path / "tiny", tmp_path / "o7", test_fraction=1.0, progress=False)
    assert not list(tmp_path.glob("o[1-35-7]/**/shard-*.tar"))  # nothing written on an error


def test_text_split_holds_whole_documents_out(tmp_path):
    for i in range(10):
        (tmp_path / "docs" / f"{i}").mkdir(parents=True)
        (tmp_path / "docs" / f"{i}" / "doc.txt").write_text(f"Doc {i} first.\n\nDoc {i} second.")
    whole = convert_text([tmp_path / "docs"], tmp_path / "all", progress=False)
    infos = convert_text_split([tmp_path / "docs"], tmp_path / "split", test_fraction=0.2, seed=0, progress=False)
    assert [infos[s].options["files"] for s in ("train", "test")] == [{"train": 8, "test": 2}] * 2
    assert infos["train"].num_samples + infos["test"].num_samples == whole.num_samples == 20
    docs = {s: {re.match(r"Doc (\d)", r["text"]).group(1) for r in text_records(tmp_path / "split" / s)}
            for s in ("train", "test")}
    assert len(docs["test"]) == 2 and not docs["train"] & docs["test"]
    assert set(infos["test"].options["inputs"]) == {str(tmp_path / "docs" / d / "doc.txt") for d in docs["test"]}


def test_text_empty_corpus_raises_before_writing(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n  \n\nab\n")
    with pytest.raises(ValueError, match=r"empty corpus: the input \(1 file\(s\)\) holds no paragraph of at least 3"):
        convert_text([tmp_path / "a.txt"], tmp_path / "out", min_chars=3, progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    (tmp_path / "b.txt").write_text("a long enough paragraph")
    with pytest.raises(ValueError, match=r"empty corpus: the (train|test) split"):
        convert_text_split([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "s", test_fraction=0.5,
                           min_chars=3, progress=False)
    assert not list((tmp_path).glob("s/*/shard-*.tar"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["textcls", "--input", "ONE", "--out", "OUT"], "single class folder ('sport')"),
        (["textcls", "--input", "CSV", "--out", "OUT", "--text-column", "txt"], "has ['body', 'label']"),
        (["textcls", "--input", "TWO", "--out", "OUT", "--test-fraction", "1.5"], "strictly between 0 and 1"),
        (["text", "--input", "BLANK", "--out", "OUT"], "empty corpus"),
        (["text", "--input", "BLANK", "--out", "OUT", "--test-fraction", "0.5"], "needs at least 2"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    _class_tree(tmp_path / "one", {"sport": 2})
    _class_tree(tmp_path / "two", {"a": 2, "b": 2})
    (tmp_path / "d.csv").write_text("body,label\nhi,x\n")
    (tmp_path / "blank.txt").write_text("\n\n")
    paths = {"ONE": "one", "TWO": "two", "CSV": "d.csv", "BLANK": "blank.txt", "OUT": "out"}
    with pytest.raises(SystemExit) as info:
        run_cli(make_shards_main, [str(tmp_path / paths[a]) if a in paths else a for a in argv])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_cli_split_writes_train_and_test(tmp_path, capsys):
    _class_tree(tmp_path / "two", {"a": 5, "b": 5})
    argv = ["textcls", "--input", str(tmp_path / "two"), "--out", str(tmp_path / "o"), "--test-fraction", "0.2",
            "--seed", "3", "--no-progress"]
    assert make_shards_main(argv) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'o'}/train: 8 samples" in out and f"{tmp_path / 'o'}/test: 2 samples" in out
    assert DatasetInfo.load(tmp_path / "o" / "test").options["seed"] == 3


# ------------------------------------------------------------------------------------------ generation

V = 97


def _tiny_lm(vocab_size: int = V, **kw) -> CooBertForCausalLM:
    torch.manual_seed(0)
    config = CooBertConfig(vocab_size=vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96, shared_key_dim=20, max_position_embeddings=128,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
    model = CooBertForCausalLM(config)
    with torch.no_grad():  # no test may pass thanks to the symmetric initialisation
        for name, p in model.named_parameters():
            if "mixing" in name or "content_bias" in name:
                p.normal_(0, 0.5)
    return model.eval()


def test_batched_generation_pads_each_row_after_its_own_eos():
    lm = _tiny_lm()
    kw = dict(do_sample=False, pad_token_id=0)
    prompts = torch.randint(4, V, (16, 4), generator=torch.Generator().manual_seed(1))
    free = lm.generate(prompts, max_new_tokens=8, eos_token_id=None, **kw)[:, 4:]
    # two prompts: row 0's first new token (the eos) never comes up in row 1's free continuation
    a, b = next((i, j) for i in range(16) for j in range(16) if free[i, 0].item() not in free[j].tolist())
    prompts, eos = prompts[[a, b]], free[a, 0].item()
    out = lm.generate(prompts, max_new_tokens=8, eos_token_id=eos, **kw)
    assert out.shape == (2, 12) and out[0, 4].item() == eos and (out[0, 5:] == 0).all()  # eos, then padding
    torch.testing.assert_close(out[1, 4:], free[b])  # row 1 runs on as if alone
    at_least = lm.generate(prompts[:1], max_new_tokens=8, min_new_tokens=3, eos_token_id=eos, **kw)[0, 4:]
    assert len(at_least) >= 3 and eos not in at_least[:3].tolist()


def test_sampling_with_and_without_cache_draws_the_same_tokens():
    lm = _tiny_lm()
    prompt = torch.randint(4, V, (3, 5), generator=torch.Generator().manual_seed(2))
    kw = dict(do_sample=True, top_k=0, temperature=1.3, max_new_tokens=12, pad_token_id=0, eos_token_id=None)
    torch.manual_seed(7)
    cached = lm.generate(prompt, use_cache=True, **kw)
    torch.manual_seed(7)
    torch.testing.assert_close(cached, lm.generate(prompt, use_cache=False, **kw))
    torch.manual_seed(8)
    assert not torch.equal(cached, lm.generate(prompt, use_cache=True, **kw))


def test_overfit_lm_with_trained_tokenizer_generates_the_text_and_stops_at_eos(tmp_path):
    """End to end: BPE trained on BBC text, a tiny CooBERT LM trained on one sentence + eos, then
    generate() from its first words reproduces it and stops at the tokenizer's eos."""
    text = (bbc_news_dir() / "tech" / "010.txt").read_text(encoding="utf-8").split("\n\n")[1].split(". ")[0] + "."
    tok = train_tokenizer(bbc_news_dir() / "tech", tmp_path / "tok", vocab_size=400)
    ids = torch.tensor([[*tok(text)["input_ids"], tok.eos_token_id]])
    lm = _tiny_lm(len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    lm.train()
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        lm(ids, labels=ids).loss.backward()
        opt.step()
    lm.eval()
    prompt = tok(" ".join(text.split()[:3]), return_tensors="pt")
    out = lm.generate(**prompt, max_new_tokens=ids.shape[1] + 20, do_sample=False)
    assert out[0, -1].item() == tok.eos_token_id and out.shape[1] == ids.shape[1]  # stopped at eos
    assert tok.decode(out[0], skip_special_tokens=True) == text


@pytest.fixture(scope="module")
def minilm_causal_k192(minilm_dir):
    """Real MiniLM weights in a causal CooBERT at D~k = 192 (block-wise SVD factors, no ALS: cheap)."""
    config = coobert_config_from_bert(read_bert_config(minilm_dir), 192)
    lm = CooBertForCausalLM(config)
    state, _ = convert_state_dict(BertModel.from_pretrained(minilm_dir).state_dict(), config, "coobert.", n_iter_max=0)
    missing, _ = lm.load_state_dict(state, strict=False)
    assert all(k.startswith("cls.") for k in missing)  # only the (tied / fresh) LM head
    return lm.eval()


def test_real_weights_cached_and_left_padded_generation_agree(minilm_causal_k192, minilm_tokenizer,
                                                               real_sentences):
    lm, tok = minilm_causal_k192, minilm_tokenizer
    tok.padding_side = "left"
    try:
        batch = tok(real_sentences[1:3], return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = "right"
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None)
    cached = lm.generate(**batch, use_cache=True, **kw)
    torch.testing.assert_close(cached, lm.generate(**batch, use_cache=False, **kw))
    width = batch["input_ids"].shape[1]
    for i, text in enumerate(real_sentences[1:3]):
        alone = lm.generate(**tok([text], return_tensors="pt", add_special_tokens=False), **kw)
        torch.testing.assert_close(cached[i, width:], alone[0, -5:])
    assert_cached_generation_exact(lm, batch["input_ids"], batch["attention_mask"], max_new_tokens=5)
