"""Train a tokenizer on your own text with the ``tokenizers`` library; load it with ``AutoTokenizer``.

Two kinds:

- ``"bpe"``: GPT-2-style byte-level BPE (NFC normalization, GPT-2's pre-tokenization regex, no
  lowercasing unless asked). Any text round-trips: ``decode(encode(x), skip_special_tokens=True)
  == NFC(x)``. ONE special token, ``<|endoftext|>`` (id 0), serves as bos, eos, pad and unk, as in
  GPT-2. A bos is prepended to every sequence, so a causal LM learns to predict the first real
  token and can generate from an empty prompt; no eos is appended (paragraph samples are usually
  truncated, and a trailing eos would teach false stops). pad == eos: padding is found through
  the attention mask, never the pad id.
- ``"wordpiece"``: BERT-style WordPiece (``BertNormalizer``: lowercase and accent stripping by
  default, ``BertPreTokenizer``), special tokens ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3,
  ``[MASK]`` 4, sequences ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1.
  Decoding is BERT's: normalized words re-joined, punctuation spacing cleaned up.

Training text comes from plain-text files, folders of ``*.txt`` (recursive) and shard directories
written by ``tools/make_shards.py`` (the ``text`` field of every sample).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlcoattn.data.schema import INFO_FILE
from vlcoattn.data.write.converters.text import read_text_file, text_records

TOKENIZER_KINDS = ("bpe", "wordpiece")
ENDOFTEXT = "<|endoftext|>"
BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"}
TRAINING_FILE = "tokenizer_training.json"  # provenance written beside tokenizer.json


def _is_shards(path: Path) -> bool:
    return path.name == INFO_FILE or path.suffix == ".tar" or (path / INFO_FILE).is_file()


def corpus_sources(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand ``inputs`` into the files and shard dirs to read: a folder without ``dataset.json``
    stands for its ``*.txt`` files (recursive, sorted). Raises for a missing path or no input."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    sources: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if path.is_dir() and not _is_shards(path):
            files = sorted(p for p in path.rglob("*.txt") if p.is_file() and not p.name.startswith("."))
            if not files:
                raise ValueError(f"{path}: no *.txt files and no {INFO_FILE} (not a shard directory)")
            sources += files
        else:
            sources.append(path)
    if not sources:
        raise ValueError("no training text given: pass text files, folders of *.txt or shard directories")
    return sources


def iter_corpus(sources: Sequence[Path]) -> Iterator[str]:
    """The texts of :func:`corpus_sources`' output: one per file, one per shard sample."""
    for path in sources:
        if _is_shards(path):
            yield from (r.get("text") or "" for r in text_records(path))
        else:
            yield read_text_file(path)


def _build(kind: str, lowercase: bool) -> tuple[Tokenizer, list[str], dict[str, str]]:
    """An untrained tokenizer, its special tokens (ids 0..), and the transformers special-token kwargs."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()] if lowercase
                                              else [normalizers.NFC()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        specials = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
        return tok, [ENDOFTEXT], specials
    tok = Tokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok, list(BERT_SPECIALS.values()), dict(BERT_SPECIALS)


def _post_processor(tok: Tokenizer, kind: str) -> processors.TemplateProcessing:
    if kind == "bpe":
        eot = (ENDOFTEXT, tok.token_to_id(ENDOFTEXT))
        return processors.TemplateProcessing(single=f"{ENDOFTEXT} $A", pair=f"{ENDOFTEXT} $A {ENDOFTEXT} $B:1",
                                             special_tokens=[eot])
    cls, sep = BERT_SPECIALS["cls_token"], BERT_SPECIALS["sep_token"]
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )


def _check_sizes(kind: str, num_specials: int, vocab_size: int, min_frequency: int, model_max_length: int) -> None:
    """ValueError naming the option for a vocabulary too small for the specials (and, byte-level BPE, the 256
    bytes it starts from), a ``min_frequency`` below 1 or a ``model_max_length`` below 2."""
    smallest = num_specials + (256 if kind == "bpe" else 1)
    if vocab_size < smallest:
        raise ValueError(f"--vocab-size must be at least {smallest} for {kind}, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"--min-frequency must be >= 1, got {min_frequency}")
    if model_max_length < 2:
        raise ValueError(f"--max-length must be >= 2, got {model_max_length}")


def _trainer(kind: str, **kwargs: Any) -> trainers.Trainer:
    """The ``tokenizers`` trainer of ``kind``; byte-level BPE starts from all 256 bytes."""
    if kind == "bpe":
        return trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **kwargs)
    return trainers.WordPieceTrainer(**kwargs)


def train_tokenizer(
    inputs: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    kind: str = "bpe",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool | None = None,
    model_max_length: int = 512,
    overwrite: bool = False,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a ``kind`` tokenizer (see the module doc) on ``inputs`` and save it to ``out_dir``.

    ``lowercase`` None means True for wordpiece (BERT uncased), False for bpe. Writes
    ``tokenizer.json``, ``tokenizer_config.json`` and :data:`TRAINING_FILE` (options, corpus size);
    ``AutoTokenizer.from_pretrained(out_dir)`` loads the result. The vocabulary can come out smaller
    than ``vocab_size`` on a small corpus. Raises ``ValueError`` for bad options, no input files or
    an empty corpus, ``FileNotFoundError`` for a missing input.
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
    lowercase = kind == "wordpiece" if lowercase is None else lowercase
    tok, specials, special_kwargs = _build(kind, lowercase)
    _check_sizes(kind, len(specials), vocab_size, min_frequency, model_max_length)
    out_dir = Path(out_dir)
    if (out_dir / "tokenizer.json").exists() and not overwrite:
        raise ValueError(f"{out_dir} already holds a tokenizer.json; pass --overwrite to replace it")
    sources = corpus_sources(inputs)

    stats = {"texts": 0, "chars": 0}

    def counted() -> Iterator[str]:
        for text in iter_corpus(sources):
            if text.strip():
                stats["texts"] += 1
                stats["chars"] += len(text)
                yield text

    trainer = _trainer(kind, vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                       show_progress=show_progress)
    tok.train_from_iterator(counted(), trainer)
    if stats["texts"] == 0:
        raise ValueError(f"empty corpus: no text in {len(sources)} input(s) ({', '.join(map(str, sources[:3]))}"
                         f"{', ...' if len(sources) > 3 else ''})")
    tok.post_processor = _post_processor(tok, kind)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # the wordpiece decoder cleans up itself; BPE is exact
        **special_kwargs,
    )
    fast.save_pretrained(out_dir)
    provenance = {
        "kind": kind, "vocab_size": tok.get_vocab_size(), "requested_vocab_size": vocab_size,
        "min_frequency": min_frequency, "lowercase": lowercase, "model_max_length": model_max_length,
        "sources": [str(s) for s in sources[:100]], "num_sources": len(sources), **stats,
    }
    (out_dir / TRAINING_FILE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return fast
