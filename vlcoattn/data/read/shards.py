"""Find and count the shards of a source: a shard directory's dataset.json, tar headers, or one read.

A shard directory is ``shard-000000.tar``, ``shard-000001.tar``, ... plus a ``dataset.json``
(:class:`~vlcoattn.data.schema.DatasetInfo`, written by :class:`~vlcoattn.data.write.sink.ShardSink`)
that records every shard's sample count, so readers can plan an epoch without opening the tars.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext, tarfile_samples

from ..answers import build_vocab
from ..schema import INFO_FILE, DatasetInfo, trained_answers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardRef:
    """A shard to read: a local path or any webdataset URL (``pipe:...``), and its sample count."""

    url: str
    samples: int


def _count_keys(names: Iterable[str]) -> int:
    """Samples in a stream of tar member names, grouped by key exactly as webdataset does."""
    count, last = 0, None
    for name in names:
        if "/" not in name and name.startswith("__") and name.endswith("__"):
            continue
        prefix, _ = base_plus_ext(name)
        if prefix is not None and prefix != last:
            count, last = count + 1, prefix
    return count


def count_samples(url: str) -> int:
    """Number of samples in one shard: tar headers only for local files, a full read otherwise."""
    if Path(url).is_file():
        names: list[str] = []
        try:
            with tarfile.open(url, "r:*") as tar:
                names += (m.name for m in tar if m.isreg())
        except tarfile.TarError as e:
            if not names:
                raise ValueError(f"{url}: not a readable tar file: {e}") from e
            log.warning("%s is damaged (%s): counting the %d members before the damage", url, e, len(names))
        return _count_keys(names)
    return scan_shard(url).num_samples


SCANNED = "scan"  # DatasetInfo.source of what scan_shard read from a shard without a dataset.json


@functools.lru_cache(maxsize=1024)
def scan_shard(url: str) -> DatasetInfo:
    """What a dataset.json would say of one shard that has none (a remote ``pipe:`` / URL shard): its
    samples, tasks, answer vocabulary with counts and labels, from one streaming read of its members.
    Cached for the process, so a remote shard is read once for all of this, not once per question."""
    log.warning("reading %s for its sample count and vocabularies (write a dataset.json to avoid this)", url)
    tasks: Counter[str] = Counter()
    answers: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    count = 0
    for sample in tarfile_samples([{"url": url}]):
        count += 1
        try:
            record = json.loads(sample["json"]) if "json" in sample else None
        except (ValueError, UnicodeDecodeError):
            continue  # the loader counts it as a bad sample
        if isinstance(record, dict) and isinstance(record.get("task"), str):
            tasks[record["task"]] += 1
            if isinstance(trained_answers(record), list):
                answers.update(str(a) for a in record["answers"])
            if isinstance(record.get("label"), str):
                labels[record["label"]] += 1
    vocab = build_vocab(answers)
    return DatasetInfo(
        source=SCANNED, num_samples=count, shards=[{"file": url, "samples": count}],
        tasks=dict(sorted(tasks.items())), answer_vocab=vocab, answer_counts=[answers[a] for a in vocab],
        label_vocab=sorted(labels), label_counts=[labels[label] for label in sorted(labels)],
    )


def _dir_info(path: Path) -> DatasetInfo | None:
    info_path = path / INFO_FILE
    return DatasetInfo.load(info_path) if info_path.is_file() else None


def resolve_shards(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[ShardRef], list[DatasetInfo]]:
    """Expand sources into shards with sample counts, plus the dataset.json of each source that has one.

    A source is a shard directory (with dataset.json), a dataset.json path, or a webdataset URL
    pattern: brace-expanded (``data/shard-{000000..000009}.tar``), ``::``-joined, local or ``pipe:``.
    Local shards take their counts from a dataset.json beside them, else from their tar headers; a
    remote shard is read once (:func:`scan_shard`) for its count and vocabularies.
    """
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise ValueError("no data source given")
    shards: list[ShardRef] = []
    infos: list[DatasetInfo] = []
    for source in items:
        path = Path(source)
        if path.is_dir() or path.name == INFO_FILE:
            folder = path if path.is_dir() else path.parent
            info = _dir_info(folder)
            if info is None:
                raise FileNotFoundError(
                    f"{folder}: no {INFO_FILE}; pass a shard pattern like {folder}/shard-*.tar"
                )
            infos.append(info)
            shards += [
                ShardRef(str(folder / s["file"]), s["samples"]) for s in info.shards if s["samples"] > 0
            ]
            continue
        counted: dict[Path, DatasetInfo | None] = {}
        for url in expand_urls(str(source)):
            local = Path(url)
            if url.startswith("pipe:") or "://" in url:
                scanned = scan_shard(url)
                infos.append(scanned)
                shards.append(ShardRef(url, scanned.num_samples))
                continue
            if not local.is_file():
                raise FileNotFoundError(f"shard {url} does not exist (from source {source!r})")
            if local.parent not in counted:
                counted[local.parent] = _dir_info(local.parent)
                if counted[local.parent] is not None:
                    infos.append(counted[local.parent])
            info = counted[local.parent]
            known = {s["file"]: s["samples"] for s in info.shards} if info else {}
            shards.append(ShardRef(url, known[local.name] if local.name in known else count_samples(url)))
    if not shards or sum(s.samples for s in shards) == 0:
        raise ValueError(f"no samples found in {items}")
    return [s for s in shards if s.samples > 0], infos


def answer_vocab_of(infos: Sequence[DatasetInfo], min_count: int = 1) -> list[str]:
    """The sources' answer vocabulary: every dataset.json entry in order of first appearance, keeping,
    with ``min_count`` > 1, those counted at least that often over all sources (VQA v2's usual
    vocabulary is the answers given at least 9 times). Answers left out score 0 in training."""
    totals: Counter[str] = Counter()
    for info in infos:
        totals.update(dict.fromkeys(info.answer_vocab, 0))
        totals.update(dict(zip(info.answer_vocab, info.answer_counts)))
    return [a for a, c in totals.items() if min_count <= 1 or c >= min_count]


def read_answer_vocab(path: str | os.PathLike, min_count: int = 1) -> list[str]:
    """An answer vocabulary from a file (a JSON list, or one answer per line) or from a shard dir /
    its dataset.json (then filtered by ``min_count``, as :func:`answer_vocab_of`)."""
    path = Path(path)
    if path.is_dir() or path.name == INFO_FILE:
        return answer_vocab_of([DatasetInfo.load(path)], min_count)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"answer vocabulary {path} does not exist") from None
    if path.suffix == ".json":
        vocab = json.loads(text)
        if not isinstance(vocab, list) or not all(isinstance(a, str) for a in vocab):
            raise ValueError(f"{path}: an answer vocabulary .json must hold a list of strings")
    else:
        vocab = [line.strip() for line in text.splitlines() if line.strip()]
    if not vocab:
        raise ValueError(f"{path}: empty answer vocabulary")
    return list(dict.fromkeys(vocab))
