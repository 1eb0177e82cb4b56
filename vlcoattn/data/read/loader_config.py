"""The training loader's options, one dataclass: what :func:`~vlcoattn.data.build_loader` reads.

Kept free of torch and PIL so the job config (``vlcoattn.train.job_config.DataConfig`` inherits it,
giving the YAML keys ``data.batch_size``, ``data.num_workers``, ...) stays light to import.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class LoaderConfig:
    """Every option of the training loader (see :mod:`vlcoattn.data.read.loader` for what each controls)."""

    batch_size: int = 32  # per rank and micro-batch
    num_workers: int = 0  # DataLoader worker processes per rank (0: decode in the main process)
    prefetch_factor: int = 2  # batches each worker prepares ahead (with num_workers > 0)
    shuffle: bool = True  # shard order and a sample buffer, reseeded every pass (False: file order)
    shuffle_buffer: int = 1000  # samples in the shuffle buffer of each stream
    samples_per_epoch: int | None = None  # global (all ranks); None = one pass over all sources
    # stop once more than this fraction of at least bad_check_after samples (per stream and per rank) were bad
    max_bad_fraction: float = 0.01
    bad_check_after: int = 200
    # training augmentation: a random horizontal flip (left/right words swapped with it), colour jitter
    # (brightness, contrast, saturation by up to color_jitter; 0: flip only, which keeps the feature cache's
    # hits) and, with crop_min_scale, a crop keeping every box whole and at least that fraction of each side
    augment: bool = False
    color_jitter: float = 0.2  # the default of ImageTransform.jitter (this module stays import-light)
    crop_min_scale: float | None = None

    @classmethod
    def of(cls, cfg: LoaderConfig) -> LoaderConfig:
        """The loader options of ``cfg`` (a LoaderConfig, or a config that extends it such as the job's
        ``DataConfig``) as a LoaderConfig of their own: what a loader keeps and sends to its workers."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    def validate(self, prefix: str = "") -> None:
        """ValueError naming the option (``prefix`` + its name, e.g. ``data.batch_size``) for a bad value."""
        checks = [
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("prefetch_factor", self.prefetch_factor >= 1, "must be >= 1"),
            ("shuffle_buffer", self.shuffle_buffer >= 1, "must be >= 1"),
            ("samples_per_epoch", self.samples_per_epoch is None or self.samples_per_epoch >= 1,
             "must be > 0 (or null: one pass over all sources)"),
            ("max_bad_fraction", 0.0 <= self.max_bad_fraction <= 1.0, "must be in [0, 1]"),
            ("bad_check_after", self.bad_check_after >= 1, "must be >= 1"),
            ("color_jitter", 0.0 <= self.color_jitter < 1.0, "must be in [0, 1)"),
            ("crop_min_scale", self.crop_min_scale is None or 0.0 < self.crop_min_scale <= 1.0,
             "must be in (0, 1] (or null: no crop)"),
            ("crop_min_scale", self.crop_min_scale is None or self.augment, "crops only with augment: true, set"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{prefix}{name} {rule}, got {getattr(self, name)!r}")
