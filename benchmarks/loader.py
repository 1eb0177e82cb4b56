"""Loader throughput vs plain PIL decode + resize of the same images, in the same run.

    python benchmarks/loader.py --num 600 --size 224 --batch-size 32

Builds a shard directory of real photos (scikit-image / scikit-learn samples, randomly cropped and
re-encoded as JPEG of 480-640 px, COCO-like, as a grounding task with one box each), then times:

- raw: ``Image.open(bytes).convert("RGB").resize((S, S))`` over the in-memory JPEG bytes, in 1 and 2
  processes (the floor any loader pays);
- the loader (tar streaming, JSON + schema checks, EXIF-aware decode, letterbox, boxes,
  tokenization, collation, normalization) with 0 and 2 workers, with and without ``fast_decode``
  (JPEG DCT-domain downscale + PIL ``reducing_gap``; the default).

Each figure is the best of ``--repeats`` runs (the machine may be shared). The overhead ratio is
loader rate / raw rate at the same parallelism (target >= 0.8).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

from PIL import Image
from transformers import AutoTokenizer

from vlcoattn import VLCoAttnImageProcessor, VLCoAttnProcessor
from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.data import LoaderConfig, ShardSink, build_loader, encode_image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


def make_shards(out_dir: Path, num: int, seed: int = 0) -> None:
    """``num`` JPEG photos of 480-640 px (random crops of the sample photos) with one box each."""
    rng = random.Random(seed)
    photos = [Image.open(sample_photo(name)).convert("RGB") for name in PHOTOS]
    with ShardSink(out_dir, "benchmark", shard_size=100, overwrite=True) as sink:
        for i in range(num):
            photo = photos[i % len(photos)]
            w, h = photo.size
            cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            side = rng.randint(480, 640)
            scale = side / max(cw, ch)
            image = photo.crop((x, y, x + cw, y + ch)).resize((round(cw * scale), round(ch * scale)))
            iw, ih = image.size
            box = [iw * 0.25, ih * 0.25, iw * 0.75, ih * 0.6]
            record = {"task": "ground", "text": f"the object in photo {i}", "boxes": [box]}
            sink.write(f"img{i:06d}", record, encode_image(image, "JPEG", quality=90), "jpg", (iw, ih))


def read_jpegs(out_dir: Path) -> list[bytes]:
    images = []
    for shard in sorted(out_dir.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            images += [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    return images


def _decode_resize(args: tuple[list[bytes], int]) -> int:
    images, size = args
    for data in images:
        Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR)
    return len(images)


def raw_rate(images: list[bytes], size: int, processes: int) -> float:
    """Images per second of plain PIL decode + resize."""
    start = time.perf_counter()
    if processes == 1:
        n = _decode_resize((images, size))
    else:
        chunks = [(images[i::processes], size) for i in range(processes)]
        with Pool(processes) as pool:
            n = sum(pool.map(_decode_resize, chunks))
    return n / (time.perf_counter() - start)


def loader_rate(out_dir: Path, tokenizer, size: int, batch_size: int, workers: int, fast: bool) -> float:
    """Samples per second over one epoch, worker start-up included."""
    processor = VLCoAttnProcessor(VLCoAttnImageProcessor(size=size, fast_decode=fast), tokenizer)
    loader = build_loader(str(out_dir), processor, LoaderConfig(batch_size=batch_size, num_workers=workers))
    start = time.perf_counter()
    n = sum(len(batch["keys"]) for batch in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=600, help="photos in the benchmark shards")
    parser.add_argument("--size", type=int, default=224, help="model input side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "shards"
        make_shards(out_dir, args.num)
        images = read_jpegs(out_dir)
        mean_px = sum(Image.open(io.BytesIO(b)).size[0] * Image.open(io.BytesIO(b)).size[1] for b in images)
        print(f"{len(images)} JPEGs, mean {mean_px / len(images) / 1e3:.0f} kpx, {args.size}px input")
        results: dict[str, float] = {}
        runs = {
            **{f"raw_{p}proc": lambda p=p: raw_rate(images, args.size, p) for p in (1, 2)},
            **{
                f"loader_{w}w{'_fast' if fast else ''}": (
                    lambda w=w, fast=fast: loader_rate(
                        out_dir, tokenizer, args.size, args.batch_size, w, fast
                    )
                )
                for w in (0, 2)
                for fast in (False, True)
            },
        }
        for _ in range(args.repeats):  # interleaved, so machine load hits every figure alike
            for name, run in runs.items():
                results[name] = max(results.get(name, 0.0), run())
    print(f"{'setup':<20} {'samples/s':>10} {'vs raw':>8}")
    for name, rate in results.items():
        raw = results["raw_1proc"] if "_0w" in name or name == "raw_1proc" else results["raw_2proc"]
        print(f"{name:<20} {rate:>10.1f} {rate / raw:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
