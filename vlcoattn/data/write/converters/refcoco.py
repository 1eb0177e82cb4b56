"""RefCOCO / RefCOCO+ / RefCOCOg (the refer toolkit's refs + COCO instances) to grounding shards."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

from ...schema import DatasetInfo, SampleError
from ..sink import ShardSink
from .common import (
    ImageStore,
    add_shard_command,
    progress_bar,
    read_json,
    report,
    sink_options,
    write_image_sample,
    write_order,
    xywh_to_xyxy,
)


def load_refs(path: str | Path, allow_pickle: bool = False) -> list[dict[str, Any]]:
    """The refer toolkit's refs: ``refs.json`` or (only with ``allow_pickle``) ``refs(unc).p``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"refs file {path} does not exist")
    if path.suffix in (".p", ".pkl", ".pickle"):
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle, and unpickling can run arbitrary code: pass --allow-pickle if you "
                "trust the file (or convert it to refs.json first)"
            )
        with path.open("rb") as f:
            refs = pickle.load(f)
    else:
        refs = read_json(path, "refs")
    if not isinstance(refs, list) or not all(isinstance(r, dict) and "sentences" in r for r in refs):
        raise ValueError(f"{path}: not a refer refs file (a list of refs with 'sentences')")
    return refs


def _split_refs(refs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The refs of ``split`` (ValueError naming the file's splits when there are none)."""
    chosen = [r for r in refs if r.get("split") == split]
    if not chosen:
        splits = sorted({str(r.get("split")) for r in refs})
        raise ValueError(f"no refs in split {split!r}; the file has splits {splits}")
    return chosen


def convert_refcoco(
    refs: str | Path,
    instances: str | Path,
    images: str | Path,
    out_dir: str | Path,
    *,
    split: str,
    allow_pickle: bool = False,
    max_side: int | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo:
    """RefCOCO / RefCOCO+ / RefCOCOg in the refer layout: one grounding sample per sentence of
    every ref in ``split``; the box is the referred annotation's COCO ``bbox`` (xywh -> xyxy)."""
    all_refs = load_refs(refs, allow_pickle)
    inst = read_json(instances, "instances")
    if not isinstance(inst, dict) or not {"images", "annotations"} <= set(inst):
        raise ValueError(f"{instances}: not a COCO instances file (needs 'images' and 'annotations')")
    chosen = _split_refs(all_refs, split)
    anns = {a["id"]: a for a in inst["annotations"]}
    image_files = {im["id"]: im["file_name"] for im in inst["images"]}
    categories = {c["id"]: c["name"] for c in inst.get("categories", [])}
    store = ImageStore(images, max_side)
    sentences = write_order(
        [(ref, sent) for ref in sorted(chosen, key=lambda r: (r["image_id"], r["ref_id"])) for sent in ref["sentences"]],
        shuffle,
    )
    options = {"refs": str(refs), "instances": str(instances), "split": split, "max_side": max_side}
    with ShardSink(out_dir, "refcoco", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for ref, sent in progress_bar(sentences, f"refcoco {split}", len(sentences), progress):
            key = f"ref-{ref['ref_id']}-{sent.get('sent_id', ref['sentences'].index(sent))}"
            ann = anns.get(ref["ann_id"])
            if ann is None or ref["image_id"] not in image_files:
                sink.skip(
                    "no_annotation", f"{key}: annotation {ref['ann_id']} or its image is not in {instances}"
                )
                continue
            try:
                box = xywh_to_xyxy(ann["bbox"])
            except SampleError as e:
                sink.skip(e.reason, f"{key}: {e}")
                continue
            record = {
                "task": "ground",
                "text": (sent.get("raw") or sent.get("sent") or "").strip(),
                "boxes": [box],
                "meta": {
                    "ref_id": ref["ref_id"],
                    "ann_id": ref["ann_id"],
                    "image_id": ref["image_id"],
                    "sent_id": sent.get("sent_id"),
                    "category": categories.get(ref.get("category_id"), ref.get("category_id")),
                    "split": split,
                },
            }
            write_image_sample(sink, store, key, image_files[ref["image_id"]], record)
    return sink.info


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``make-shards refcoco``."""
    p = add_shard_command(sub, "refcoco", "RefCOCO/+/g refs + COCO instances json (refer layout)", images=True)
    p.add_argument("--refs", required=True, help="refs.json, or refs(unc).p with --allow-pickle")
    p.add_argument("--instances", required=True, help="instances.json")
    p.add_argument("--images", required=True, help="COCO train2014 image folder")
    p.add_argument("--split", required=True, help="refs split: train, val, test, testA, testB")
    p.add_argument("--allow-pickle", action="store_true", help="allow a pickled refs file (runs its code!)")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    info = convert_refcoco(
        args.refs, args.instances, args.images, args.out, split=args.split, allow_pickle=args.allow_pickle,
        max_side=args.max_side, **sink_options(args),
    )
    return report(args.out, info)
