"""studies/error_analysis.py: `spatial` accuracy by the objects' distance, the hold-out by unseen pairs."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from vlcoattn.data import SyntheticConfig, parse_holdout, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
AXIS = {"left": 0, "right": 0, "above": 1, "below": 1}


def _row(out: str, *first: str) -> list[str]:
    line = next(x for x in out.splitlines() if x.startswith("| " + " | ".join(first) + " |"))
    return [c.strip() for c in line.strip("|").split("|")][len(first):]


def _box(objects: list[dict], desc: dict) -> list[float]:
    return next(o["box"] for o in objects if all(o[k] == v for k, v in desc.items()))


def _cell(scores: list[float]) -> str:
    return f"{sum(scores) / len(scores):.3f} ({len(scores)})" if scores else "–"


def test_error_analysis_buckets_spatial_questions_by_distance_and_the_holdout_by_pair(tmp_path):
    # captions too: a vqa+ground+phrase run's predictions hold phrase rows, which the tables leave out
    config = SyntheticConfig(image_size=64, holdout=parse_holdout("cogent"), captions=True)
    write_synthetic(tmp_path / "data", 4, seed=0, config=config, val_num=12, test_num=12, progress=False)
    held = {tuple(p) for p in config.holdout}
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    gaps, grounding, vqa = {}, {"val": [], False: [], True: []}, {"val": [], "holdout": []}
    for split in ("val", "test", "holdout"):
        rows, buckets = [], [[], [], []]
        with tarfile.open(next((tmp_path / "data" / split).glob("*.tar"))) as tar:
            for member in (m for m in tar.getmembers() if m.name.endswith(".json")):
                record, key = json.load(tar.extractfile(member)), member.name.removesuffix(".json")
                meta, score = record["meta"], float(len(rows) % 3 != 0)
                if record["task"] == "phrase":
                    rows.append({"key": key, "task": "phrase", "phrases": []})
                    continue
                if record["task"] == "ground":
                    rows.append({"key": key, "task": "ground", "iou": 0.7 * score})
                    target = meta["objects"][meta["object"]]
                    if split != "test":
                        grounding["val" if split == "val" else (target["color"], target["shape"]) in held].append(score)
                    continue
                rows.append({"key": key, "task": "vqa", "score": score})
                vqa.get(split, []).append(score)
                if meta["type"] == "spatial":
                    a, b = (_box(meta["objects"], d) for d in (meta["program"]["target"],
                                                                 meta["program"]["relation"]["anchor"]))
                    axis = AXIS[meta["program"]["relation"]["dir"]]
                    gap = abs((a[axis] + a[axis + 2]) - (b[axis] + b[axis + 2])) / 2
                    buckets[min(int(gap // 8), 2)].append(score)  # cells of 8 px
        (run / "predictions" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        gaps[split] = buckets
    assert all(any(gaps[s][b] for s in gaps) for b in (0, 2)) and grounding[True] and grounding[False]
    assert any('"task": "phrase"' in p.read_text() for p in (run / "predictions").iterdir())

    out = tmp_path / "analysis.md"
    proc = subprocess.run([sys.executable, "studies/error_analysis.py", str(run), "--data", str(tmp_path / "data"),
                           "--cell", "8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for split, buckets in gaps.items():
        assert _row(text, "run", split) == [*(_cell(b) for b in buckets), _cell([x for b in buckets for x in b])]
    assert _row(text, "run", "ground") == [_cell(grounding["val"]), _cell(grounding[False]), _cell(grounding[True])]
    val, seen, unseen = _row(text, "run", "vqa")
    assert val == _cell(vqa["val"])
    assert int(seen.split("(")[1][:-1]) + int(unseen.split("(")[1][:-1]) == len(vqa["holdout"])
