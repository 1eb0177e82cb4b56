"""Tokenizer training (vlcoattn.text.tokenizer, tools/train_tokenizer.py) on the real BBC News corpus."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from vlcoattn.assets import bbc_news_dir
from vlcoattn.cli.train_tokenizer import main as train_tokenizer_main
from vlcoattn.data import LoaderConfig, build_loader, convert_text
from vlcoattn.text.tokenizer import TRAINING_FILE, train_tokenizer
from vlcoattn.utils.cli import run_cli


@pytest.fixture(scope="module")
def bbc_sentences() -> list[str]:
    """Real BBC sentences: headlines and first sentences of five articles per class, plus every
    sentence with a pound sign (non-ASCII) of business/001."""
    root = bbc_news_dir()
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for i in range(10, 15):
            paragraphs = [p for p in (folder / f"{i:03d}.txt").read_text(encoding="utf-8").split("\n\n") if p.strip()]
            out += [paragraphs[0].strip(), re.split(r"(?<=\.) ", paragraphs[1].strip())[0]]
    business = (root / "business" / "001.txt").read_text(encoding="utf-8")
    out += [s for s in re.split(r"(?<=\.) ", business.replace("\n", " ")) if "£" in s]
    assert any("£" in s for s in out)
    return out


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(bbc_news_dir(), out, kind="bpe", vocab_size=2000)
    return out


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wordpiece")
    train_tokenizer(bbc_news_dir(), out, kind="wordpiece", vocab_size=2000)
    return out


def test_bpe_round_trip_is_exact(bpe_dir, bbc_sentences):
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == 0 and len(tok) == 2000
    unseen = "Ünïcödé, emoji 🙂 and 漢字 never seen in training\n\ttabs  and  double spaces"
    for text in [*bbc_sentences, unseen]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
        assert tok.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFC", text)
    assert tok.decode(tok("cafe\u0301")["input_ids"], skip_special_tokens=True) == "caf\u00e9"  # NFC
    stats = json.loads((bpe_dir / TRAINING_FILE).read_text())
    assert stats["texts"] == 2225 and stats["num_sources"] == 2225 and stats["lowercase"] is False


def test_wordpiece_round_trip_matches_bert_uncased(wordpiece_dir, bbc_sentences, minilm_tokenizer):
    """Decoding normalizes as BERT uncased does: our tokenizer round-trips every sentence to exactly
    what MiniLM's own (BERT uncased) tokenizer round-trips it to."""
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    specials = [tok.pad_token, tok.unk_token, tok.cls_token, tok.sep_token, tok.mask_token]
    assert tok.convert_tokens_to_ids(specials) == [0, 1, 2, 3, 4]
    for text in bbc_sentences:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
        bert = minilm_tokenizer.decode(minilm_tokenizer(text)["input_ids"], skip_special_tokens=True)
        assert tok.decode(ids, skip_special_tokens=True) == bert
    pair = tok("first part", "second part", return_token_type_ids=True)
    assert pair["token_type_ids"] == [0] * 4 + [1] * 3 and pair["input_ids"].count(tok.sep_token_id) == 2


def test_train_from_shards_and_feed_the_loader(tmp_path, bbc_sentences):
    (tmp_path / "a.txt").write_text("\n\n".join(bbc_sentences))
    info = convert_text([tmp_path / "a.txt"], tmp_path / "lm", progress=False)
    tok = train_tokenizer(tmp_path / "lm", tmp_path / "tok", vocab_size=400, min_frequency=1)
    assert json.loads((tmp_path / "tok" / TRAINING_FILE).read_text())["texts"] == info.num_samples
    (batch,) = list(build_loader(str(tmp_path / "lm"), tok,
                                 LoaderConfig(batch_size=info.num_samples, shuffle=False)))
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    # pad == eos == bos: padding is found through the attention mask, so real bos tokens stay targets
    assert torch.equal(batch["labels"] == -100, batch["attention_mask"] == 0)
    assert tok.decode(batch["input_ids"][0], skip_special_tokens=True) == batch["texts"][0]


def test_bad_inputs_raise_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text(" \n\n ")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(tmp_path / "empty", tmp_path / "t1")
    with pytest.raises(ValueError, match=r"no \*\.txt files"):
        train_tokenizer(tmp_path / "nothing", tmp_path / "t2")
    with pytest.raises(ValueError, match="no training text given"):
        train_tokenizer([], tmp_path / "t3")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_tokenizer(tmp_path / "missing", tmp_path / "t4")
    with pytest.raises(ValueError, match="kind must be one of"):
        train_tokenizer(tmp_path / "empty", tmp_path / "t5", kind="unigram")
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(tmp_path / "empty", tmp_path / "t6", vocab_size=100)
    assert not (tmp_path / "t1" / "tokenizer.json").exists()


def test_cli_trains_and_reports_errors_in_one_line(tmp_path, capsys, bbc_sentences):
    (tmp_path / "a.txt").write_text("\n".join(bbc_sentences))
    argv = ["--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "tok"), "--kind", "wordpiece",
            "--vocab-size", "300", "--min-frequency", "1", "--no-lowercase"]
    assert train_tokenizer_main(argv) == 0
    assert "wordpiece tokenizer, vocabulary 300, trained on 1 texts" in capsys.readouterr().out
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.convert_ids_to_tokens(tok("Kampala")["input_ids"])[1][0] == "K"  # --no-lowercase kept case
    (tmp_path / "blank.txt").write_text("   \n")
    for bad, message in [
        (["--input", str(tmp_path / "blank.txt"), "--out", str(tmp_path / "t2")], "empty corpus"),
        (argv, "already holds a tokenizer.json; pass --overwrite"),
        (["--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "t3"), "--vocab-size", "x"], "invalid int"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(train_tokenizer_main, bad)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
