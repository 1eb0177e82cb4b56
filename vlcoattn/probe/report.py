"""What a feature probe found, and the setting it recommends.

A setting is an (input size, level) pair. For each attribute the best setting is the one with the highest
held-out accuracy; the recommendation is the cheapest setting within ``tolerance`` (default 2 points) of that
best, cheapest meaning the smallest input (pixels), then the coarsest level (fewest cells for the fusion).
Two points is about twice the standard error of an accuracy near 0.9 on 500 held-out objects: closer
settings are not told apart by the probe. One setting is recommended for every attribute together when one
is within ``tolerance`` of each attribute's best; an attribute whose best accuracy is within ``tolerance``
of chance is read at no setting asked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..utils.reporting import markdown_table
from .linear import ProbeScore

__all__ = ["TOLERANCE", "ProbeReport", "ProbeResult"]

TOLERANCE = 0.02
Setting = tuple[tuple[int, int], int]  # ((H, W) input, stride)


@dataclass(frozen=True)
class ProbeResult:
    """One probe: an attribute read from one level of the backbone at one input size."""

    image_size: tuple[int, int]
    stride: int
    grid: tuple[int, int]
    attribute: str
    score: ProbeScore

    @property
    def setting(self) -> Setting:
        return self.image_size, self.stride


def _size(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def _setting(setting: Setting) -> str:
    return f"{_size(setting[0])} px, stride {setting[1]}"


def _setting_dict(setting: Setting | None) -> dict[str, Any] | None:
    return None if setting is None else {"image_size": list(setting[0]), "stride": setting[1]}


@dataclass
class ProbeReport:
    """The probes of every attribute, input size and level; ``context`` (backbone, data, ...) heads the report."""

    results: list[ProbeResult]
    pool: str
    heldout: str  # how the held-out objects were chosen
    tolerance: float = TOLERANCE
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        return list(dict.fromkeys(r.attribute for r in self.results))

    def best(self, attribute: str) -> ProbeResult:
        return max((r for r in self.results if r.attribute == attribute), key=lambda r: r.score.heldout)

    def cheapest_within(self, attributes: list[str]) -> Setting | None:
        """The cheapest setting within ``tolerance`` of each of ``attributes``' best held-out accuracy."""
        best = {a: self.best(a).score.heldout for a in attributes}
        settings = sorted({r.setting for r in self.results}, key=lambda s: (s[0][0] * s[0][1], -s[1]))
        for setting in settings:
            chosen = [r for r in self.results if r.setting == setting and r.attribute in best]
            if chosen and all(r.score.heldout >= best[r.attribute] - self.tolerance for r in chosen):
                return setting
        return None

    def unread(self) -> list[str]:
        """Attributes whose best held-out accuracy is within ``tolerance`` of chance."""
        return [a for a in self.attributes if self.best(a).score.heldout - self.best(a).score.chance <= self.tolerance]

    def recommendation(self) -> dict[str, Any]:
        """{"all": setting for every attribute or None, "per_attribute": {attribute: setting}, "unread": [...]}."""
        return {"all": self.cheapest_within(self.attributes),
                "per_attribute": {a: self.cheapest_within([a]) for a in self.attributes},
                "unread": self.unread()}

    def table(self) -> str:
        """Held-out accuracy (train in brackets) per setting and attribute, under a row of chance baselines."""
        attributes = self.attributes
        cells = {(r.setting, r.attribute): r for r in self.results}
        first = {a: next(r for r in self.results if r.attribute == a) for a in attributes}
        rows: list[list[object]] = [["chance", "", *(f"{first[a].score.chance:.3f}" for a in attributes)]]
        for setting in dict.fromkeys(r.setting for r in self.results):
            grid = next(r.grid for r in self.results if r.setting == setting)
            scores = [cells[setting, a].score for a in attributes]
            rows.append([_size(setting[0]), f"{setting[1]} ({_size(grid)})",
                         *(f"{s.heldout:.3f} ({s.train:.3f})" for s in scores)])
        return markdown_table(["input", "stride (grid)", *attributes], rows)

    def markdown(self) -> str:
        """The report: context, the table, what was fitted on what, and the recommendation."""
        lines = [f"- {key}: {value}" for key, value in self.context.items()]
        lines += ["", f"Held-out accuracy of a linear probe on the {self.pool} of the feature cells under each "
                      "object's box (train accuracy in brackets); chance: the majority class of the training "
                      f"objects. Held out: {self.heldout}.", "", self.table(), ""]
        for a in self.attributes:
            s = self.best(a).score  # the objects are the same at every setting
            lines.append(f"- {a}: {s.train_objects} train / {s.heldout_objects} held-out objects, "
                         f"{s.classes} classes")
        lines += ["", f"Recommendation (the smallest input, then the coarsest level, within "
                      f"{100 * self.tolerance:g} points of the best held-out accuracy):"]
        rec = self.recommendation()
        overall = rec["all"]
        lines.append(f"- every attribute: {_setting(overall)}" if overall else
                     "- no one setting is that close to the best for every attribute; per attribute:")
        for a, setting in rec["per_attribute"].items():
            best = self.best(a)
            lines.append(f"- {a}: {_setting(setting)} (best {best.score.heldout:.3f} at "
                         f"{_setting(best.setting)}; chance {best.score.chance:.3f})")
        if rec["unread"]:
            lines.append(f"- not read at any setting asked (best within {100 * self.tolerance:g} points of "
                         f"chance): {', '.join(rec['unread'])}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommendation()
        return {**self.context, "pool": self.pool, "heldout": self.heldout, "tolerance": self.tolerance,
                "results": [{**asdict(r), "image_size": list(r.image_size), "grid": list(r.grid)}
                            for r in self.results],
                "recommendation": {"all": _setting_dict(rec["all"]), "unread": rec["unread"],
                                   "per_attribute": {a: _setting_dict(s) for a, s in rec["per_attribute"].items()}}}

    def write(self, out_dir: str | Path) -> list[Path]:
        """``report.md`` and ``probe.json`` into ``out_dir`` (created)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text("# What the backbone sees\n\n" + self.markdown(), encoding="utf-8")
        (out / "probe.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return [out / "report.md", out / "probe.json"]
