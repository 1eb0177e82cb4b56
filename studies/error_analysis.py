"""Where a CLEVR-lite model's errors are: `spatial` by the objects' distance, the hold-out by unseen pairs.

    python studies/error_analysis.py RUN_DIR [RUN_DIR ...] [--data data/clevr-lite-4000] [--cell 16]
        [--out studies/results/error_analysis.md]

Reads the predictions a run's final evaluation wrote (``RUN_DIR/predictions/{split}.jsonl``) and
regenerates each scene from the options in the split's ``dataset.json`` (the generator is
deterministic per scene), then writes two tables:

- `spatial` accuracy by the distance of the two box centres along the relation's axis, in feature
  cells of ``--cell`` px. "Is the red square left of the blue circle?" asks for the sign of that
  distance; the generator keeps it >= 4% of the image (5 px at 128), under one cell at stride 16.
- the CoGenT hold-out split by whether a sample involves an object of a held-out (colour, shape)
  pair ((mark, shape) in the glyphs family) (grounding: the referred object; VQA: any object the question's descriptions match), against
  val. The hold-out split puts such objects in its scenes and refers to them first.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from vlcoattn.data.write.synthetic import SceneObject, SyntheticConfig, generate_scene, relation_margin
from vlcoattn.utils.reporting import markdown_table

SPLITS = ("val", "test", "holdout")
BUCKETS = ((0.0, 1.0), (1.0, 2.0), (2.0, float("inf")))  # in cells


def scene_records(split_dir: Path, split: str) -> tuple[dict[str, tuple[dict[str, Any], list[SceneObject]]],
                                                       set[tuple[str, str]]]:
    """Every sample's (record, its scene's objects) by prediction key, and the hold-out (colour, shape)
    pairs, of one split."""
    options = json.loads((split_dir / "dataset.json").read_text())["options"]
    holdout = tuple(tuple(pair) for pair in options["holdout"])  # in its order: the scenes' RNG draws from it
    fields = SyntheticConfig.__dataclass_fields__
    config = SyntheticConfig(**{k: v for k, v in options.items() if k in fields and k != "holdout"}, holdout=holdout)
    records = {}
    for index in range(options["scenes"]):
        scene = generate_scene(options["seed"], split, index, config)
        for suffix, record in scene.records:
            records[f"{split}-{index:07d}-{suffix}"] = record, scene.objects
    return records, set(holdout)


def spatial_gap(program: dict[str, Any], objects: list[SceneObject]) -> float:
    """|distance| (px) of a `spatial` question's two objects along the relation's axis."""
    target, = (o for o in objects if o.matches(program["target"]))
    anchor, = (o for o in objects if o.matches(program["relation"]["anchor"]))
    return abs(relation_margin(target, anchor, program["relation"]["dir"]))


def involves_holdout_pair(record: dict[str, Any], objects: list[SceneObject], holdout: set[tuple[str, str]]) -> bool:
    """The referred object (grounding), or an object a question's descriptions match (VQA), is a held-out pair."""
    meta = record["meta"]
    if record["task"] == "ground":
        involved = [objects[meta["object"]]]
    else:
        program = meta["program"]
        descriptions = [program["target"], *([program["relation"]["anchor"]] if program.get("relation") else [])]
        involved = [o for o in objects if any(o.matches(d) for d in descriptions)]
    return any(o.pair in holdout for o in involved)


PAIR_TASKS = ("vqa", "ground")  # the hold-out table's rows; phrase rows are scored by report.md


def correct(row: dict[str, Any]) -> float:
    """VQA score, or 1 for a box at IoU >= 0.5."""
    return row["score"] if row["task"] == "vqa" else float(row["iou"] >= 0.5)


def table_cell(scores: list[float]) -> str:
    """The mean and, in brackets, how many: "0.822 (259)"; "–" for none."""
    return f"{sum(scores) / len(scores):.3f} ({len(scores)})" if scores else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories with predictions/{split}.jsonl")
    parser.add_argument("--data", type=Path, default=Path("data/clevr-lite-4000"))
    parser.add_argument("--cell", type=float, default=16.0, help="feature cell in px (stride 16)")
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = parser.parse_args()
    data = {split: scene_records(args.data / split, split) for split in SPLITS}
    gap_rows, pair_rows = [], []
    for run in args.runs:
        groups: dict[tuple, list[float]] = defaultdict(list)
        for split in SPLITS:
            records, holdout = data[split]
            for line in (run / "predictions" / f"{split}.jsonl").read_text().splitlines():
                row = json.loads(line)
                record, objects = records[row["key"]]
                if record["meta"].get("type") == "spatial":
                    gap = spatial_gap(record["meta"]["program"], objects) / args.cell
                    bucket = next(i for i, (lo, hi) in enumerate(BUCKETS) if lo <= gap < hi)
                    groups["gap", split, bucket].append(row["score"])
                    groups["gap", split, "all"].append(row["score"])
                if split != "test" and row["task"] in PAIR_TASKS:
                    pair = "val" if split == "val" else involves_holdout_pair(record, objects, holdout)
                    groups["pair", row["task"], pair].append(correct(row))
        for split in SPLITS:
            gap_rows.append([run.name, split, *(table_cell(groups["gap", split, b]) for b in (*range(len(BUCKETS)), "all"))])
        for task in PAIR_TASKS:
            pair_rows.append([run.name, task, *(table_cell(groups["pair", task, p]) for p in ("val", False, True))])
    buckets = [f"{lo:g}–{hi:g} cells" if hi != float("inf") else f"≥ {lo:g} cells" for lo, hi in BUCKETS]
    tables = (
        f"`spatial` accuracy by the two objects' distance along the relation's axis, in cells of {args.cell:g} px "
        "(questions in brackets)\n\n" + markdown_table(["run", "split", *buckets, "all"], gap_rows) + "\n\n"
        "Hold-out samples with and without an object of a held-out (colour, shape) pair, against val (VQA "
        "accuracy; grounding Acc@0.5)\n\n"
        + markdown_table(["run", "task", "val", "hold-out, seen pairs only", "hold-out, a held-out pair"], pair_rows)
    )
    print(tables)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(tables + "\n")


if __name__ == "__main__":
    main()
