"""The streaming loader: sources -> per-rank, per-worker sample streams -> decoded, collated batches.

How the data is laid out (computed identically in every rank and worker; a pure function of the
seed, the layout and the position):

1. every source (a shard dir, dataset.json or URL pattern: one entry of ``sources``) is planned on
   its own: its shard list is shuffled with ``(seed, pass)`` and its concatenated samples are cut
   into contiguous ranges, one per stream (stream = ``rank * workers + worker``), so each stream
   owns a slice of every source. With one source a range is a whole number of batches, with several
   any number of samples; the remainder (< ``world_size * batch_size`` resp. ``world_size``
   samples) waits for a later pass;
2. a stream reads each source's range (opening only the shards it overlaps) through a seeded
   shuffle buffer, pass after pass, endlessly;
3. mixing: each sample slot draws its source i with probability ``weights[i] / sum(weights)``
   (default: the sources' sample counts, the composition of their concatenation) from a hash of
   (seed, stream, slot counter). The sample is decoded; a bad one is skipped and counted, and the
   next slot is drawn. With one source every slot reads it, which is exactly the stream of 1-2.
   ``batch["sources"]`` lists each row's source index.

An epoch is a fixed number of batches per rank (``samples_per_epoch // (world_size * batch_size)``,
default: all sources' samples), split across workers so that the DataLoader's round-robin gives
every rank the same count and a deterministic order.

A stream's position is, per source, (pass, samples taken from its shuffle buffer), plus its slot
counter; every batch carries it, so :meth:`ShardLoader.state_dict` knows exactly where each worker
stands and a restored loader replays the remaining stream (re-reading, but not decoding, the
consumed part of the current ranges). Elastic resume (``load_state_dict(state, elastic=True)`` on
another number of ranks or workers) is approximate: from the global sample count in the state it
sets the epoch and batch count and puts every stream of source i at the fraction of a pass that
``global_samples * weights[i] / sum(weights)`` samples of it make; around the change some samples
may be seen twice or not at all, and the order differs from an uninterrupted run.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import hashlib
import itertools
import logging
import math
import os
import random
import signal
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from ...tasks import check_batchable
from ..schema import BAD_REASONS, DatasetInfo, SampleError
from .loader_config import LoaderConfig
from .pipeline import Collator, SampleDecoder, decoder_and_collator, image_transform
from .shards import ShardRef, answer_vocab_of, resolve_shards
from .transforms import ImageTransform

log = logging.getLogger(__name__)

STATE_VERSION = 2

# ---------------------------------------------------------------------------------------------- planning


def worker_quota(batches: int, workers: int, worker: int) -> int:
    """Batches that ``worker`` of ``workers`` yields when a rank yields ``batches`` round-robin."""
    return batches // workers + (worker < batches % workers)


@dataclass(frozen=True)
class Plan:
    """Where every stream reads one source in each pass. Pure function of its fields."""

    counts: tuple[int, ...]  # samples per shard
    seed: int
    shuffle: bool
    world_size: int
    workers: int  # streams per rank
    unit: int  # a range is a whole number of units: a batch with one source, a sample when mixing

    @property
    def units_per_rank(self) -> int:
        """Whole units each rank gets from one pass."""
        return sum(self.counts) // (self.world_size * self.unit)

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a Plan lives as long as its loader)
    def segments(self, pass_index: int, stream: int) -> tuple[tuple[int, int, int], ...]:
        """(shard index, first sample, end sample) pieces of ``stream``'s range in ``pass_index``."""
        order = list(range(len(self.counts)))
        if self.shuffle:
            random.Random(f"shards:{self.seed}:{pass_index}").shuffle(order)
        starts = [0]
        for i in order:
            starts.append(starts[-1] + self.counts[i])
        begin = sum(self.range_length(s) for s in range(stream))  # ranges laid out rank-major
        end = begin + self.range_length(stream)
        pieces = []
        k = bisect.bisect_right(starts, begin) - 1
        while begin < end:
            shard_end = starts[k + 1]
            stop = min(end, shard_end)
            pieces.append((order[k], begin - starts[k], stop - starts[k]))
            begin, k = stop, k + 1
        return tuple(pieces)

    def range_length(self, stream: int) -> int:
        """Samples ``stream`` (= rank * workers + worker) reads per pass: its whole units."""
        return self.unit * worker_quota(self.units_per_rank, self.workers, stream % self.workers)

    def position_at(self, samples: float, stream: int) -> tuple[int, int]:
        """(pass, offset) of ``stream`` once all streams together have read ``samples`` samples."""
        passes = samples / (self.units_per_rank * self.unit * self.world_size)
        return int(passes), int((passes - int(passes)) * self.range_length(stream))


def mix_draw(seed: int, stream: int, slot: int, cumulative: Sequence[float]) -> int:
    """The source of sample slot ``slot`` of ``stream``: i with probability proportional to weight i
    (``cumulative`` = running sums of the weights). A hash, not an RNG state, so resuming is exact."""
    digest = hashlib.blake2b(f"mix:{seed}:{stream}:{slot}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return bisect.bisect_right(cumulative, u * cumulative[-1])


# ---------------------------------------------------------------------------------------------- reading


def read_shard(url: str, start: int, stop: int) -> Iterator[dict[str, Any]]:
    """Raw samples ``start..stop-1`` of one shard. Samples a truncated or unreadable tar cannot
    deliver come out as placeholders with ``__error__`` so positions and counts stay exact."""
    errors: list[Exception] = []

    def keep(exn: Exception) -> bool:
        errors.append(exn)
        return False  # stop reading this shard

    n = 0
    samples = tarfile_samples([{"url": url}], handler=keep)
    for sample in samples:
        if n >= stop:
            break
        if n >= start:
            yield sample
        n += 1
    samples.close()
    if n < stop:
        why = f"{errors[0]}" if errors else "the shard ended early"
        message = f"{url}: only {n} of {stop} expected samples readable ({why})"
        for i in range(max(start, n), stop):
            yield {"__key__": f"{os.path.basename(url)}#{i}", "__url__": url, "__error__": message}


def shuffled(samples: Iterator[Any], buffer: int, rng: random.Random) -> Iterator[Any]:
    """Buffer shuffle: each output is drawn at random from the next ``buffer`` inputs."""
    pool: list[Any] = []
    for sample in samples:
        if len(pool) < buffer:
            pool.append(sample)
            continue
        i = rng.randrange(len(pool))
        yield pool[i]
        pool[i] = sample
    rng.shuffle(pool)
    yield from pool


@dataclass
class StreamCounters:
    """Samples a stream has taken and how many of them were bad, by reason."""

    seen: int = 0
    bad: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "bad": dict(self.bad)}


class BadDataError(ValueError):
    """The data is too bad to go on (too many bad samples, or a source without one valid sample). Raised in a
    loader worker, it travels to the main process as a batch (see ``_RankStream.__iter__``) and is raised
    there with its own message, which torch's re-raise of a worker exception would replace."""


def check_bad_fraction(seen: int, bad: Counter[str], limit: float, min_seen: int) -> None:
    """Raise BadDataError once more than ``limit`` of at least ``min_seen`` samples were bad."""
    total = sum(bad.values())
    if seen >= min_seen and total > limit * seen:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(bad.items()))
        raise BadDataError(
            f"{total} of {seen} samples were bad ({total / seen:.1%} > max_bad_fraction={limit:.1%}): "
            f"{reasons}. Fix the data (see the logged examples) or raise max_bad_fraction."
        )


def log_bad_sample(count: int, reason: str, key: str, url: str, message: str) -> None:
    """Rate-limited warning: the ``count``-th bad sample of a reason is logged for counts 1-5 and
    powers of two (8, 16, 32, ...)."""
    if count <= 5 or count & (count - 1) == 0:
        log.warning("bad sample #%d (%s) %s in %s: %s", count, reason, key, url, message)


@dataclass
class PassCheck:
    """Fails a source whose whole pass (of one stream's range) gave no valid sample: all its data is bad."""

    pass_index: int
    whole: bool  # the pass was read from its start
    good: int = 0

    def enter(self, pass_index: int, stream: int, source: int) -> None:
        if pass_index == self.pass_index:
            return
        if self.whole and self.good == 0:
            raise BadDataError(
                f"stream {stream}: a whole pass of source {source} gave no valid sample; is all its data bad?"
            )
        self.pass_index, self.whole, self.good = pass_index, True, 0


Position = tuple[tuple[int, int], ...]  # per source: (pass, samples taken from its shuffle buffer)
STOP = "_stop"  # a worker's "batch" that carries a BadDataError's message instead of samples


@dataclass
class _RankStream(IterableDataset):
    """One epoch (or its rest) of one rank: each worker yields its quota of batches."""

    sources: tuple[tuple[ShardRef, ...], ...]
    plans: tuple[Plan, ...]  # one per source
    cumulative: tuple[float, ...]  # running sums of the source weights
    rank: int
    decoder: SampleDecoder
    collator: Collator
    cfg: LoaderConfig
    starts: dict[int, Position]  # logical worker -> position
    slots: dict[int, int]  # logical worker -> mixing slot counter
    counters: dict[int, dict[str, Any]]  # logical worker -> StreamCounters.as_dict()
    remaining: dict[int, int]  # logical worker -> batches still to yield this epoch
    rotation: int  # physical worker i plays logical worker (i + rotation) % workers

    def _raw(
        self, source: int, stream: int, start: tuple[int, int]
    ) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
        """Endless ((pass, offset after), raw sample) of one source from ``start``."""
        plan, shards = self.plans[source], self.sources[source]
        pass_index, offset = start
        while True:
            samples: Iterator[dict[str, Any]] = (
                raw
                for shard, a, b in plan.segments(pass_index, stream)
                for raw in read_shard(shards[shard].url, a, b)
            )
            if plan.shuffle:
                samples = shuffled(
                    samples, self.cfg.shuffle_buffer, random.Random(f"samples:{plan.seed}:{pass_index}:{stream}")
                )
            for i, raw in enumerate(samples):
                if i >= offset:
                    yield (pass_index, i + 1), raw
            pass_index, offset = pass_index + 1, 0

    def _decode(self, raw: dict[str, Any], pass_index: int) -> dict[str, Any]:
        if "__error__" in raw:
            raise SampleError("unreadable_shard", raw["__error__"])
        sample = self.decoder(raw, pass_index)
        self.collator.check(sample)
        return sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._batches()
        except BadDataError as e:
            if get_worker_info() is None:
                raise
            yield {STOP: str(e)}  # ShardLoader raises it in the main process, message intact

    def _batches(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        workers, seed = self.plans[0].workers, self.plans[0].seed
        logical = (physical + self.rotation) % workers
        stream = self.rank * workers + logical
        todo = self.remaining[logical]
        if todo <= 0:
            return
        counters = StreamCounters(self.counters[logical]["seen"], Counter(self.counters[logical]["bad"]))
        positions, slot = list(self.starts[logical]), self.slots[logical]
        readers = [self._raw(i, stream, start) for i, start in enumerate(positions)]
        checks = [PassCheck(p, offset == 0) for p, offset in positions]
        batch: list[dict[str, Any]] = []
        rows: list[int] = []  # the source of each sample in batch
        while True:
            source = mix_draw(seed, stream, slot, self.cumulative)
            slot += 1
            positions[source], raw = next(readers[source])
            pass_index = positions[source][0]
            checks[source].enter(pass_index, stream, source)
            counters.seen += 1
            try:
                batch.append(self._decode(raw, pass_index))
            except SampleError as e:
                counters.bad[e.reason] += 1
                key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
                log_bad_sample(counters.bad[e.reason], e.reason, key, url, str(e))
                check_bad_fraction(counters.seen, counters.bad, self.cfg.max_bad_fraction, self.cfg.bad_check_after)
                continue
            checks[source].good += 1
            rows.append(source)
            if len(batch) == self.cfg.batch_size:
                out = self.collator(batch)
                out["sources"] = rows
                out["_stream"] = {
                    "worker": logical,
                    "positions": [list(p) for p in positions],
                    "slot": slot,
                    "counters": counters.as_dict(),
                }
                yield out
                batch, rows = [], []
                todo -= 1
                if todo == 0:
                    return


# ---------------------------------------------------------------------------------------------- loader


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """Loader workers ignore SIGINT / SIGTERM. A Ctrl-C in a terminal or a scheduler's SIGTERM reaches the
    whole process group; the trainer (the main process) then checkpoints at the next step boundary and
    shuts its workers down itself, which it could not do if they had died under it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# DataLoader iterators whose workers may still run. Their workers ignore SIGTERM (above), so they must be
# shut down by the main process, through torch's own protocol, before it exits: otherwise multiprocessing's
# exit handler terminates them with a SIGTERM they ignore and waits for them forever (their watchdog sees the
# main process alive), and torch's own shutdown is a no-op once the interpreter exits.
_LIVE_WORKERS: weakref.WeakSet[Any] = weakref.WeakSet()


def shutdown_workers(batches: Iterator[Any]) -> None:
    """Stop the worker processes of a DataLoader iterator now (a no-op for other iterators): an error
    raised in or past the loop keeps the iterator alive in its traceback until the interpreter exits."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's, also what its __del__ calls
    if shutdown is not None:
        shutdown()
        _LIVE_WORKERS.discard(batches)


@atexit.register  # registered after torch's and multiprocessing's exit handlers, so it runs before them
def _shutdown_live_workers() -> None:
    for batches in list(_LIVE_WORKERS):
        shutdown_workers(batches)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _merged_vocab(infos: Sequence[DatasetInfo], attr: str) -> list[str]:
    seen: dict[str, None] = {}
    for info in infos:
        seen.update(dict.fromkeys(getattr(info, attr)))
    return list(seen)


def declared_mix(infos_per_source: Sequence[Sequence[DatasetInfo]], weights: Sequence[float],
                 kind: str) -> dict[str, float] | None:
    """The share of each task (``kind="tasks"``) or label (``"labels"``) that mixing the sources by
    ``weights`` should give, from their dataset.json; None where a source has no counts."""
    mix: Counter[str] = Counter()
    for infos, weight in zip(infos_per_source, weights):
        counts: Counter[str] = Counter()
        for info in infos:
            if kind == "tasks":
                counts.update(info.tasks)
            elif len(info.label_counts) == len(info.label_vocab):
                counts.update(dict(zip(info.label_vocab, info.label_counts)))
        total = sum(counts.values())
        if not infos or (kind == "tasks" and not total):
            return None
        for key, n in counts.items():
            mix[key] += weight * n / total
    norm = sum(mix.values())
    return {k: v / norm for k, v in mix.items()} if norm else None


class MixMonitor:
    """Warns (once per kind) when the tasks or labels of a window of ``window`` samples are far from
    the sources' declared mix (total variation distance > ``tolerance``): shards written in sorted
    order give batches of one class, and a model fit on them predicts one class."""

    def __init__(self, expected: dict[str, dict[str, float] | None], label_names: Sequence[str],
                 window: int = 512, tolerance: float = 0.3) -> None:
        self.expected = {kind: mix for kind, mix in expected.items() if mix and len(mix) > 1}
        self.label_names, self.window, self.tolerance = list(label_names), window, tolerance
        self.seen: dict[str, Counter[str]] = {kind: Counter() for kind in self.expected}
        self.warned: set[str] = set()

    def observe(self, batch: dict[str, Any]) -> None:
        if "tasks" in self.seen:
            self.seen["tasks"].update(batch["tasks"])
        if "labels" in self.seen and "labels" in batch and batch["labels"].dim() == 1:  # class ids (lm's are 2-D)
            self.seen["labels"].update(self.label_names[i] for i in batch["labels"].tolist() if i >= 0)
        for kind, seen in self.seen.items():
            total = sum(seen.values())
            if total < self.window:
                continue
            want = self.expected[kind]
            distance = 0.5 * sum(abs(seen[k] / total - want.get(k, 0.0)) for k in set(seen) | set(want))
            if distance > self.tolerance and kind not in self.warned:
                self.warned.add(kind)
                got = ", ".join(f"{k} {seen[k] / total:.0%}" for k, _ in seen.most_common(5))
                declared = ", ".join(f"{k} {v:.0%}" for k, v in sorted(want.items(), key=lambda kv: -kv[1])[:5])
                log.warning(
                    "the last %d samples hold %s %s, but the sources' dataset.json declare %s: the shards look "
                    "sorted, and a model fit on such batches learns one %s at a time. Rewrite them shuffled "
                    "(vlcoattn-make-shards shuffles by default) or raise data.shuffle_buffer.",
                    total, kind, got, declared, kind.rstrip("s"),
                )
            seen.clear()


class ShardLoader:
    """Iterable over one epoch of batches per ``for`` loop, resumable mid-epoch.

    Build it with :func:`build_loader`. ``sources`` holds one shard list per source, mixed with
    ``weights`` (default: their sample counts). ``len(loader)`` is the number of batches per epoch on
    this rank (the same on every rank). ``state_dict()`` / ``load_state_dict()`` save and restore the
    exact position (epoch, batches taken, each worker's place in each source and its mixing slot,
    bad-sample counts), or an approximate one on another layout (``elastic=True``).
    """

    def __init__(
        self,
        sources: Sequence[Sequence[ShardRef]],
        decoder: SampleDecoder,
        collator: Collator,
        cfg: LoaderConfig,
        *,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        mix_monitor: MixMonitor | None = None,
    ):
        cfg.validate()
        if not 0 <= rank < world_size:
            raise ValueError(f"bad loader setup: rank={rank}, world_size={world_size}")
        self.sources = tuple(tuple(shards) for shards in sources)
        sizes = [sum(s.samples for s in shards) for shards in self.sources]
        self.weights = _check_weights(weights, sizes)
        self.decoder, self.collator, self.cfg = decoder, collator, LoaderConfig.of(cfg)
        self.rank, self.world_size, self.seed, self.pin_memory = rank, world_size, seed, pin_memory
        self.mix_monitor = mix_monitor
        self.workers = max(1, cfg.num_workers)  # streams per rank
        unit = cfg.batch_size if len(self.sources) == 1 else 1
        self.plans = tuple(
            Plan(tuple(s.samples for s in shards), seed, cfg.shuffle, world_size, self.workers, unit)
            for shards in self.sources
        )
        self.batches_per_epoch = self._check_layout(sizes)
        self.epoch = 0
        self.batches_done = 0  # in the current epoch
        start: Position = ((0, 0),) * len(self.sources)
        self._positions = dict.fromkeys(range(self.workers), start)
        self._slots = dict.fromkeys(range(self.workers), 0)
        self._counters = {w: StreamCounters().as_dict() for w in range(self.workers)}
        if cfg.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no Rust thread pool in forked workers

    def _check_layout(self, sizes: Sequence[int]) -> int:
        """Batches per epoch on each rank, after checking that every stream gets data."""
        batch, world, workers = self.cfg.batch_size, self.world_size, self.workers
        if sum(sizes) // (world * batch) < workers:
            raise ValueError(
                f"{sum(sizes)} samples cannot give each of {workers} worker(s) "
                f"on {world} rank(s) a batch of {batch}: use fewer workers or smaller batches"
            )
        for i, plan in enumerate(self.plans):
            if plan.units_per_rank < workers:
                raise ValueError(
                    f"source {i} has {sizes[i]} samples, fewer than one for each of the {workers} "
                    f"worker(s) on {world} rank(s): use fewer workers or more data"
                )
        samples = self.cfg.samples_per_epoch
        per_rank = (samples if samples is not None else sum(sizes)) // (world * batch)
        if per_rank < 1:
            raise ValueError(f"samples_per_epoch={samples} is less than one batch per rank")
        return per_rank

    def __len__(self) -> int:
        return self.batches_per_epoch

    @property
    def fingerprint(self) -> str:
        """Identifies the sources (shard urls + counts) and their weights a saved position belongs to."""
        text = "\n".join(
            f"source {i} weight {w!r}\n" + "\n".join(f"{s.url}\t{s.samples}" for s in shards)
            for i, (shards, w) in enumerate(zip(self.sources, self.weights))
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def global_samples(self) -> int:
        """Samples yielded by all ranks together so far (every rank takes as many batches)."""
        return (self.epoch * self.batches_per_epoch + self.batches_done) * self.cfg.batch_size * self.world_size

    def bad_samples(self) -> dict[str, int]:
        """Bad samples skipped so far on this rank, by reason (see ``schema.BAD_REASONS``)."""
        total: Counter[str] = Counter()
        for c in self._counters.values():
            total.update(c["bad"])
        return {r: total[r] for r in BAD_REASONS if total[r]}

    def samples_seen(self) -> int:
        """Raw samples taken from the streams so far on this rank (valid + bad)."""
        return sum(c["seen"] for c in self._counters.values())

    def _epoch_stream(self) -> _RankStream:
        workers = self.workers
        done = self.batches_done
        remaining = {
            w: worker_quota(self.batches_per_epoch, workers, w) - worker_quota(done, workers, w)
            for w in range(workers)
        }
        return _RankStream(
            self.sources,
            self.plans,
            tuple(itertools.accumulate(self.weights)),
            self.rank,
            self.decoder,
            self.collator,
            self.cfg,
            dict(self._positions),
            dict(self._slots),
            dict(self._counters),
            remaining,
            rotation=done % workers,
        )

    def _worker_batches(self, stream: _RankStream) -> Iterator[dict[str, Any]]:
        """The epoch's batches: from ``stream`` itself, or from its DataLoader workers."""
        if self.cfg.num_workers == 0:
            return iter(stream)
        batches = iter(
            DataLoader(
                stream,
                batch_size=None,
                num_workers=self.cfg.num_workers,
                prefetch_factor=self.cfg.prefetch_factor,
                pin_memory=self.pin_memory,
                # its own generator: starting workers must not draw from the global torch RNG, or a
                # resumed run (which starts them at another step) would see other dropout masks
                generator=torch.Generator().manual_seed(self.seed),
                worker_init_fn=leave_stop_signals_to_the_main_process,
            )
        )
        _LIVE_WORKERS.add(batches)
        return batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.batches_done >= self.batches_per_epoch:
            self.epoch, self.batches_done = self.epoch + 1, 0
        batches = self._worker_batches(self._epoch_stream())
        try:
            for batch in batches:
                if STOP in batch:
                    raise BadDataError(batch[STOP])
                self._take(batch)
                yield batch
        finally:  # now, whatever ended the epoch (see shutdown_workers)
            shutdown_workers(batches)
        if self.batches_done != self.batches_per_epoch:
            raise RuntimeError(
                f"rank {self.rank} got {self.batches_done} of {self.batches_per_epoch} batches"
            )
        self.epoch, self.batches_done = self.epoch + 1, 0

    def _take(self, batch: dict[str, Any]) -> None:
        """Record the position a batch carries, check the rank's bad fraction and watch the mix."""
        info = batch.pop("_stream")
        worker = info["worker"]
        self._positions[worker] = tuple((int(p), int(o)) for p, o in info["positions"])
        self._slots[worker] = int(info["slot"])
        self._counters[worker] = info["counters"]
        self.batches_done += 1
        check_bad_fraction(
            self.samples_seen(), Counter(self.bad_samples()), self.cfg.max_bad_fraction, self.cfg.bad_check_after
        )
        if self.mix_monitor is not None:
            self.mix_monitor.observe(batch)

    def state_dict(self) -> dict[str, Any]:
        """The position on this rank; save one per rank. ``global_samples`` (the same on every rank)
        is what an elastic resume on another layout continues from."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_samples": self.global_samples,
            "positions": {str(w): [list(p) for p in ps] for w, ps in self._positions.items()},
            "slots": {str(w): s for w, s in self._slots.items()},
            "counters": {str(w): c for w, c in self._counters.items()},
            "rank": self.rank,
            "world_size": self.world_size,
            "workers": self.workers,
            "batch_size": self.cfg.batch_size,
            "seed": self.seed,
            "shuffle": self.cfg.shuffle,
            "samples_per_epoch": self.cfg.samples_per_epoch,
            "weights": list(self.weights),
            "fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any], elastic: bool = False) -> None:
        """Continue from a :meth:`state_dict` of a loader with the same data, weights and layout.

        With ``elastic=True`` the layout (world size, rank, workers) may differ: the loader then
        continues approximately from the state's ``global_samples`` (see the module doc); with the
        same layout it resumes exactly either way.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} != {STATE_VERSION}")
        mine = self.state_dict()
        layout = ("world_size", "workers", "rank")
        for key in ("batch_size", "seed", "shuffle", "samples_per_epoch", "weights", "fingerprint", *layout):
            if state.get(key) != mine[key] and not (elastic and key in layout):
                raise ValueError(
                    f"cannot resume: saved {key}={state.get(key)!r} but this loader has {mine[key]!r}"
                    " (resume needs the same data, weights, batch size and seed, and the same ranks"
                    " and workers unless elastic=True)"
                )
        if any(state[key] != mine[key] for key in layout):
            self._place(int(state["global_samples"]))
            return
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self._positions = {
            int(w): tuple((int(p), int(o)) for p, o in ps) for w, ps in state["positions"].items()
        }
        self._slots = {int(w): int(s) for w, s in state["slots"].items()}
        self._counters = {
            int(w): {"seen": c["seen"], "bad": dict(c["bad"])} for w, c in state["counters"].items()
        }

    def _place(self, global_samples: int) -> None:
        """Elastic resume: the approximate position of this layout after ``global_samples`` samples.
        Bad-sample counters start again from zero."""
        per_step = self.cfg.batch_size * self.world_size
        self.epoch, rest = divmod(global_samples, self.batches_per_epoch * per_step)
        self.batches_done = rest // per_step
        total = sum(self.weights)
        for w in range(self.workers):
            stream = self.rank * self.workers + w
            self._positions[w] = tuple(
                plan.position_at(global_samples * weight / total, stream)
                for plan, weight in zip(self.plans, self.weights)
            )
            self._slots[w] = global_samples // (self.world_size * self.workers)  # fresh mixing draws
            self._counters[w] = StreamCounters().as_dict()


def _check_weights(weights: Sequence[float] | None, sizes: Sequence[int]) -> tuple[float, ...]:
    """The sources' mixing weights: ``weights`` checked, or by default their sample counts."""
    if weights is None:
        return tuple(float(n) for n in sizes)
    if len(weights) != len(sizes):
        raise ValueError(f"got {len(weights)} weights for {len(sizes)} sources: give one weight per source")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"weights must be finite and > 0, got {list(weights)}")
    return tuple(float(w) for w in weights)


def _decoder_and_collator(
    infos: Sequence[DatasetInfo],
    processor: Any,
    answer_vocab: Sequence[str] | None,
    label_vocab: Sequence[str] | None,
    **kwargs: Any,
) -> tuple[SampleDecoder, Collator]:
    """:func:`decoder_and_collator` for these sources: vocabularies default to their dataset.json."""
    check_batchable([t for info in infos for t in info.tasks], "the sources mix")
    return decoder_and_collator(
        processor, **kwargs,
        answer_vocab=list(answer_vocab) if answer_vocab is not None else answer_vocab_of(infos),
        label_vocab=list(label_vocab) if label_vocab is not None else sorted(_merged_vocab(infos, "label_vocab")),
    )


def build_loader(
    sources: str | Sequence[str],
    processor: Any,
    cfg: LoaderConfig | None = None,
    *,
    transform: ImageTransform | None = None,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    answer_vocab: Sequence[str] | None = None,
    label_vocab: Sequence[str] | None = None,
    pin_memory: bool = False,
    phrase_spans: bool = False,
) -> ShardLoader:
    """A resumable, distributed-aware loader over shard directories / patterns (see module doc).

    ``processor``: the model's :class:`~vlcoattn.models.VLCoAttnProcessor` (image preparation and
    tokenizer, the one used at evaluation and inference too), or a tokenizer for text-only models.
    Texts are truncated at the tokenizer's ``model_max_length``. ``cfg``: every loader option
    (:class:`~vlcoattn.data.LoaderConfig`; default its defaults). ``transform``: the image transform,
    built once by the caller (default: the processor's, with ``cfg``'s augmentation; see
    :func:`~vlcoattn.data.image_transform`).

    ``sources``: shard dirs, ``dataset.json`` paths or URL patterns (brace-expanded, ``::``-joined,
    ``pipe:`` allowed); each entry is one source, and every batch mixes the sources at random in
    proportion to ``weights`` (one per source, finite and > 0; default: their sample counts).
    ``seed`` fixes shard order, shuffling, mixing and augmentation. ``rank`` / ``world_size`` default
    to torch.distributed when initialized. ``answer_vocab`` / ``label_vocab`` default to the union of
    the sources' ``dataset.json`` vocabularies. ``phrase_spans``: every batch carries the phrase spans of all
    its rows (``phrase_tokens``, ``phrase_boxes``, ``phrase_mask``; what the priors' supervision reads).
    """
    cfg = cfg if cfg is not None else LoaderConfig()
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise ValueError("no data source given")
    resolved = [resolve_shards(item) for item in items]
    if rank is None or world_size is None:
        rank, world_size = _dist_rank_world()
    transform = transform if transform is not None else image_transform(processor, cfg)
    infos_per_source = [infos for _, infos in resolved]
    decoder, collator = _decoder_and_collator(
        [info for infos in infos_per_source for info in infos], processor, answer_vocab, label_vocab,
        transform=transform, seed=seed, phrase_spans=phrase_spans,
    )
    loader = ShardLoader([shards for shards, _ in resolved], decoder, collator, cfg, weights=weights, seed=seed,
                         rank=rank, world_size=world_size, pin_memory=pin_memory)
    loader.mix_monitor = MixMonitor(
        {kind: declared_mix(infos_per_source, loader.weights, kind) for kind in ("tasks", "labels")},
        collator.label_vocab,
    )
    return loader


class EvalLoader:
    """Every sample of the sources exactly once, in shard order, split over ranks (sample i goes to
    rank i % world_size); batches of ``batch_size`` with a smaller last one. Bad samples are skipped and
    counted (:meth:`bad_samples`), as in training. For metrics that must cover the whole split."""

    def __init__(self, shards: Sequence[ShardRef], decoder: SampleDecoder, collator: Collator, *,
                 batch_size: int, rank: int = 0, world_size: int = 1, limit: int | None = None):
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad eval loader setup: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.shards, self.decoder, self.collator = tuple(shards), decoder, collator
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        total = sum(s.samples for s in self.shards)
        self.num_samples = total if limit is None else min(limit, total)  # over all ranks
        self.bad: Counter[str] = Counter()

    def __len__(self) -> int:
        mine = len(range(self.rank, self.num_samples, self.world_size))
        return -(-mine // self.batch_size)

    def bad_samples(self) -> dict[str, int]:
        """Bad samples skipped by the last pass on this rank, by reason."""
        return {r: self.bad[r] for r in BAD_REASONS if self.bad[r]}

    def _mine(self) -> Iterator[dict[str, Any]]:
        index = 0
        for shard in self.shards:
            stop = min(shard.samples, self.num_samples - index)
            if stop <= 0:
                return
            for raw in read_shard(shard.url, 0, stop):
                if index % self.world_size == self.rank:
                    yield raw
                index += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.bad = Counter()
        batch: list[dict[str, Any]] = []
        for raw in self._mine():
            try:
                if "__error__" in raw:
                    raise SampleError("unreadable_shard", raw["__error__"])
                sample = self.decoder(raw)
                self.collator.check(sample)
            except SampleError as e:
                self.bad[e.reason] += 1
                log_bad_sample(self.bad[e.reason], e.reason, raw.get("__key__", "?"), raw.get("__url__", "?"), str(e))
                continue
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield self.collator(batch)
                batch = []
        if batch:
            yield self.collator(batch)


def build_eval_loader(
    sources: str | Sequence[str],
    processor: Any,
    *,
    batch_size: int = 32,
    rank: int | None = None,
    world_size: int | None = None,
    answer_vocab: Sequence[str] | None = None,
    label_vocab: Sequence[str] | None = None,
    limit: int | None = None,
) -> EvalLoader:
    """An :class:`EvalLoader`: the first ``limit`` (default all) samples, each exactly once over all
    ranks, no shuffling or augmentation; other arguments as :func:`build_loader`."""
    shards, infos = resolve_shards(sources)
    if rank is None or world_size is None:
        rank, world_size = _dist_rank_world()
    decoder, collator = _decoder_and_collator(infos, processor, answer_vocab, label_vocab)
    return EvalLoader(shards, decoder, collator, batch_size=batch_size, rank=rank, world_size=world_size, limit=limit)
