"""Shard directories: writing them (:class:`ShardSink`) and finding/counting shards to read.

A shard directory is ``shard-000000.tar``, ``shard-000001.tar``, ... written by
``webdataset.ShardWriter`` plus a ``dataset.json`` (:class:`~vlcoattn.data.schema.DatasetInfo`)
that records every shard's sample count, so readers can plan an epoch without opening the tars.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext, tarfile_samples

from .answers import build_vocab
from ..utils.checks import check_positive
from .schema import INFO_FILE, SHARD_PATTERN, DatasetInfo, SampleError, check_record, trained_answers

log = logging.getLogger(__name__)

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_key(key: str) -> str:
    """A webdataset key: no dots or slashes (they would split the sample), only [A-Za-z0-9_-]."""
    clean = _KEY_UNSAFE.sub("_", str(key)).strip("_")
    if not clean:
        raise ValueError(f"sample key {key!r} has no usable characters")
    return clean


class ShardSink:
    """Write schema-checked samples to ``out_dir/shard-%06d.tar``; :meth:`close` writes dataset.json.

    ``answer_vocab`` fixes the answer vocabulary; else it is built by frequency from the answers that
    ``count_answers(record)`` names (default: all of the record's answers), keeping those counted at least
    ``min_answer_count`` times. Answers outside it score 0 in training, as in VQA v2's soft scores.
    Records that cannot be converted are reported with :meth:`skip` and counted by reason. Used as
    a context manager it closes itself on success; the written :class:`DatasetInfo` is then ``.info``.
    """

    def __init__(
        self,
        out_dir: str | Path,
        source: str,
        *,
        shard_size: int = 10_000,
        max_shard_bytes: float = 1e9,
        overwrite: bool = False,
        options: dict[str, Any] | None = None,
        answer_vocab: Sequence[str] | None = None,
        count_answers: Callable[[dict[str, Any]], Iterable[str]] | None = None,
        min_answer_count: int = 1,
    ):
        self.out_dir = Path(out_dir)
        self.count_answers = count_answers or (lambda record: record.get("answers", ()))
        check_positive("min_answer_count", min_answer_count)
        self.min_answer_count = int(min_answer_count)
        self.source = source
        self.options = dict(options or {})
        self.fixed_answers = list(answer_vocab) if answer_vocab is not None else None
        self._prepare_dir(overwrite)
        self.shards: list[dict[str, Any]] = []
        self.tasks: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._keys: set[str] = set()
        self.info: DatasetInfo | None = None
        self._writer = wds.ShardWriter(
            str(self.out_dir / SHARD_PATTERN),
            maxcount=shard_size,
            maxsize=max_shard_bytes,
            verbose=0,
            post=self._shard_done,
        )

    def _prepare_dir(self, overwrite: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.out_dir.glob("shard-*.tar")) + sorted(self.out_dir.glob(INFO_FILE))
        if old and not overwrite:
            raise ValueError(
                f"{self.out_dir} already holds shards or {INFO_FILE}; pass --overwrite to replace them"
            )
        for path in old:
            path.unlink()

    def _shard_done(self, fname: str) -> None:
        self.shards.append({"file": Path(fname).name, "samples": self._writer.count})

    def write(
        self,
        key: str,
        record: dict[str, Any],
        image: bytes | None = None,
        image_ext: str = "jpg",
        image_size: tuple[int, int] | None = None,
    ) -> None:
        """Write one sample. Raises :class:`SampleError` for a record that breaks the schema (boxes are
        checked against ``image_size``, the stored image's (width, height), when given)."""
        key = sanitize_key(key)
        if key in self._keys:
            raise SampleError("bad_field", f"duplicate sample key {key!r}")
        record = check_record(record, has_image=image is not None, image_size=image_size)
        if self.fixed_answers is not None and not set(record.get("answers", ())) <= set(self.fixed_answers):
            raise ValueError(f"{key}: answers {record['answers']} outside the fixed answer vocabulary")
        sample = {"__key__": key, "json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
        if image is not None:
            sample[image_ext] = image
        self._writer.write(sample)
        self._keys.add(key)
        self.tasks[record["task"]] += 1
        if trained_answers(record):
            self.answers.update(self.count_answers(record))
        if "label" in record:
            self.labels[record["label"]] += 1

    def add(
        self,
        key: str,
        record: dict[str, Any],
        image: bytes | None = None,
        image_ext: str = "jpg",
        image_size: tuple[int, int] | None = None,
    ) -> bool:
        """:meth:`write`, but a record that breaks the schema is skipped and counted instead."""
        try:
            self.write(key, record, image, image_ext, image_size)
        except SampleError as e:
            self.skip(e.reason, f"{key}: {e}")
            return False
        return True

    def skip(self, reason: str, message: str) -> None:
        """Count a skipped input record; the first few are logged in full."""
        self.skipped[reason] += 1
        if sum(self.skipped.values()) <= 10:
            log.warning("skipped (%s): %s", reason, message)

    def close(self) -> DatasetInfo:
        """Finish the last shard, drop an empty one, write and return dataset.json."""
        self._writer.close()
        for empty in [s for s in self.shards if s["samples"] == 0]:
            (self.out_dir / empty["file"]).unlink()
        self.shards = [s for s in self.shards if s["samples"] > 0]
        vocab = self.fixed_answers if self.fixed_answers is not None else build_vocab(self.answers, self.min_answer_count)
        info = DatasetInfo(
            source=self.source,
            num_samples=sum(s["samples"] for s in self.shards),
            shards=self.shards,
            tasks=dict(sorted(self.tasks.items())),
            answer_vocab=vocab,
            answer_counts=[self.answers[a] for a in vocab],
            label_vocab=sorted(self.labels),
            label_counts=[self.labels[label] for label in sorted(self.labels)],
            skipped=dict(sorted(self.skipped.items())),
            options=self.options,
        )
        (self.out_dir / INFO_FILE).write_text(info.to_json(), encoding="utf-8")
        self.info = info
        return info

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()


# ---------------------------------------------------------------------------------------------- reading


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
