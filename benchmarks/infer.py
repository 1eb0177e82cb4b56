"""Inference through ``vlcoattn.infer.Predictor``: one pair per call vs one call for a batch of pairs.

    python benchmarks/infer.py [--model DIR] [--coobert DIR] [--image 128] [--batch 32] [--repeats 5] [--threads N]

Model: ``--model`` (any saved image-text dir), else the demo size built here: MiniLM converted to
CooBERT with D~k=192 (``--coobert DIR`` to reuse a converted dir; converting takes a few minutes),
EfficientNet-Lite0 with its ImageNet weights, 2 SMCA fusion layers of width 384,
``VLCoAttnForMultitask`` (100 answers + box) at ``--image`` px, saved with the tokenizer and loaded
back by ``Predictor.from_pretrained`` (the path ``tools/infer.py`` takes). Pairs: the 5 bundled
photos (512x512 to 640x427) with questions, cycled to ``--batch`` pairs. Timed: whole calls (decode,
EXIF, letterbox, tokenize, forward, answers / box / token priors in pixels), medians of interleaved
runs; the baseline is the same pairs one ``predict()`` call each, in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.infer import Predictor
from vlcoattn.models import VLCoAttnForMultitask
from vlcoattn.utils.reporting import machine, markdown_table

from timing import interleaved_medians

PAIRS = [
    ("astronaut", "what is the woman wearing?"),
    ("coffee", "is there a spoon on the saucer?"),
    ("chelsea", "what animal is this?"),
    ("china", "the building on the left"),
    ("flower", "what color are the petals?"),
]


def build_demo_model(out: Path, coobert: Path | None, image: int) -> Path:
    """The demo-size multitask model saved in ``out`` (random fusion and heads: timing only)."""
    if coobert is None:
        from vlcoattn.text.convert import convert_bert_dir

        coobert = out / "coobert-k192"
        convert_bert_dir(minilm_dir(), coobert, 192)
    torch.manual_seed(0)
    model = VLCoAttnForMultitask.from_text_and_backbone(
        coobert, "tf_efficientnet_lite0", image_size=[image, image], coattention_config={"num_layers": 2},
        heads_config={"answer_vocab": [f"answer {i}" for i in range(100)]},
    )
    model.save_pretrained(out / "model")
    AutoTokenizer.from_pretrained(coobert).save_pretrained(out / "model")
    return out / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a saved image-text model dir")
    parser.add_argument("--coobert", type=Path, default=None, help="a converted CooBERT dir (default: convert)")
    parser.add_argument("--image", type=int, default=128, help="input size of the built model (default 128)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_demo_model(Path(tmp), args.coobert, args.image)
        predictor = Predictor.from_pretrained(model_dir)
    pairs = [(sample_photo(name), text) for name, text in PAIRS]
    pairs = (pairs * (args.batch // len(pairs) + 1))[: args.batch]
    B = len(pairs)

    results: dict[str, list[dict]] = {"batch 1": [], f"batch {B}": []}  # every prediction, for its timing_ms
    fns = {
        "batch 1": lambda: results["batch 1"].extend(predictor.predict(image, text) for image, text in pairs),
        f"batch {B}": lambda: results[f"batch {B}"].extend(predictor.predict_batch(pairs)),
    }
    t = interleaved_medians(fns, repeats=args.repeats, warmup=1)
    rows = []
    for name, seconds in t.items():
        per_pair = seconds / B
        pre = statistics.median(r["timing_ms"]["preprocess"] for r in results[name])
        fwd = statistics.median(r["timing_ms"]["model"] for r in results[name])
        rows.append([name, f"{per_pair * 1e3:.1f}", f"{1 / per_pair:.1f}", f"{pre:.1f}", f"{fwd:.1f}",
                     f"{t['batch 1'] / seconds:.2f}"])
    size = predictor.processor.image_processor.canvas_size
    print(f"Machine: {machine()}")
    print(f"Model: {type(predictor.model).__name__} from {args.model or 'the demo build'}, "
          f"input {size[0]}x{size[1]}, {B} pairs (5 photos), "
          f"{sum(p.numel() for p in predictor.model.parameters()) / 1e6:.1f}M params, median of {args.repeats}")
    print(markdown_table(
        ["setup", "ms / pair", "pairs / s", "preprocess ms / pair", "model ms / pair", "throughput vs batch 1"], rows
    ))


if __name__ == "__main__":
    main()
