"""Shared fixtures: the real offline assets (docs/design.md §5) and small random configs."""

from __future__ import annotations

import os

import pytest
import torch

# No hub access, ever, whatever the caller's environment says (set before anything imports huggingface_hub,
# which reads them once): every asset the tests use ships with the package (vlcoattn.assets).
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
os.environ.update(OFFLINE)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

REAL_SENTENCES = [
    "A man is riding a red bicycle down a busy street in the rain.",
    "Two dogs play with a ball.",
    "The central bank raised interest rates for the third time this year, citing persistent inflation.",
    "What color is the large cube?",
    "Hello.",
]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "matrix: a slow test the dependency matrix (.ci/matrix) runs too: DDP, FSDP, resume")


@pytest.fixture
def one_thread():
    """torch on one thread for a test: tiny models and small training loops gain nothing from more, and
    more oversubscribe the 2 shared CI cores. Modules opt in with ``pytestmark``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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

