"""BERT -> CooBERT conversion: real MiniLM reproduces transformers' BertModel; heads; CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertLMHeadModel,
    BertModel,
)

import vlcoattn  # noqa: F401
from vlcoattn import CooBertForCausalLM, CooBertForMaskedLM, CooBertForSequenceClassification, CooBertModel
from vlcoattn.text.convert import convert_bert_dir, convert_bert_to_coobert

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def test_full_rank_minilm_reproduces_transformers_bertmodel(minilm_dir, minilm_tokenizer, real_sentences):
    coobert, report = convert_bert_to_coobert(minilm_dir)
    assert isinstance(coobert, CooBertModel) and coobert.config.shared_key_dim == 384
    assert max(report.layer_rel_errors) < 1e-6
    bert = BertModel.from_pretrained(minilm_dir).eval()
    batch = minilm_tokenizer(real_sentences, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really a padded batch
    expected = bert(**batch).last_hidden_state
    got = coobert(**batch).last_hidden_state
    diff = (expected - got).abs().max().item()
    assert diff <= 1e-4, diff
    torch.testing.assert_close(coobert(**batch).pooler_output, bert(**batch).pooler_output, atol=1e-4, rtol=0)


def small_bert_dir(tmp_path: Path, cls, **kw) -> Path:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=40, num_labels=3, **kw)
    model = cls(cfg)
    with torch.no_grad():  # non-trivial biases so the content-bias path is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    model.save_pretrained(tmp_path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(115)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("bert_cls", "coo_cls", "kw"),
    [
        (BertForSequenceClassification, CooBertForSequenceClassification, {}),
        (BertForMaskedLM, CooBertForMaskedLM, {}),
        (BertLMHeadModel, CooBertForCausalLM, {"is_decoder": True}),
    ],
)
@torch.no_grad()
def test_head_architectures_convert_exactly(tmp_path, bert_cls, coo_cls, kw):
    src = small_bert_dir(tmp_path / "bert", bert_cls, **kw)
    report = convert_bert_dir(src, tmp_path / "coo", sentences=["w1 w2 w3", "w4"])
    assert report.max_abs_diff < 1e-5
    loaded = coo_cls.from_pretrained(tmp_path / "coo").eval()
    bert = bert_cls.from_pretrained(src).eval()
    ids = torch.randint(5, 120, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    got, expected = loaded(ids, attention_mask=mask).logits, bert(ids, attention_mask=mask).logits
    if got.ndim == 3:  # per-token logits: causal CooBERT numbers positions by real tokens, so compare those
        got, expected = got[mask.bool()], expected[mask.bool()]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_low_rank_conversion_writes_a_loadable_dir(tmp_path):
    src = small_bert_dir(tmp_path / "bert", BertModel)
    full = convert_bert_dir(src, tmp_path / "k32", shared_key_dim=32)
    half = convert_bert_dir(src, tmp_path / "k16", shared_key_dim=16, n_iter_max=5)
    quarter = convert_bert_dir(src, tmp_path / "k8", shared_key_dim=8, n_iter_max=5)
    assert full.max_abs_diff < 1e-5
    assert 0 < half.layer_rel_errors[0] < quarter.layer_rel_errors[0] < 1
    assert half.attention_params_coobert < full.attention_params_coobert
    model = AutoModel.from_pretrained(tmp_path / "k16")
    assert model.encoder.layer[0].attention.self.mixing.shape == (4, 16)
    saved = json.loads((tmp_path / "k16" / "conversion_report.json").read_text())
    assert saved["shared_key_dim"] == 16 and len(saved["layer_rel_errors"]) == 2
    assert (tmp_path / "k16" / "tokenizer.json").is_file()


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "convert_bert.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_converts_bundled_minilm(tmp_path):
    res = run_tool("--src", "minilm", "--dst", str(tmp_path / "out"), "--shared-key-dim", "384")
    assert res.returncode == 0, res.stderr
    assert "layer 5: relative error" in res.stdout and "mean cosine 1.0000" in res.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_cli_bad_inputs_give_one_error_line(tmp_path):
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    cases = [
        (["--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "o1")], "does not exist"),
        (["--src", str(gpt), "--dst", str(tmp_path / "o2")], "not a BERT checkpoint"),
        (["--src", str(tmp_path), "--dst", str(tmp_path / "o3")], "no config.json"),
        (["--src", str(afile), "--dst", str(tmp_path / "o4")], "not a directory"),
        (["--src", "minilm", "--dst", str(tmp_path / "o5"), "--shared-key-dim", "1000"], "shared_key_dim must be in"),
        (["--dst", str(tmp_path / "o6")], "required"),
    ]
    for args, message in cases:
        res = run_tool(*args)
        assert res.returncode == 2, (args, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, res.stderr)
        assert "Traceback" not in res.stderr
