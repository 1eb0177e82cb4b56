"""Shared fixtures: the real offline assets (docs/design.md §5) and small random configs."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub access, ever
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

REAL_SENTENCES = [
    "A man is riding a red bicycle down a busy street in the rain.",
    "Two dogs play with a ball.",
    "The central bank raised interest rates for the third time this year, citing persistent inflation.",
    "What color is the large cube?",
    "Hello.",
]


@pytest.fixture(scope="session")
def minilm_dir():
    from vlcoattn.assets import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="session")
def real_sentences():
    return list(REAL_SENTENCES)

