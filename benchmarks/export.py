"""ONNX Runtime (CPU) vs eager PyTorch: the exported model's forward pass at batch 1 and 32, in the same run.

    python benchmarks/export.py [--model DIR] [--image 128] [--batch 32] [--repeats 5] [--threads N]

Model: ``--model`` (any dir ``vlcoattn-export`` takes), else the demo size built here with random
weights (timing only): a CooBERT of MiniLM-L6-H384's shape (6 layers, 12 heads, D~k=192),
EfficientNet-Lite0, 2 SMCA fusion layers of width 384, ``VLCoAttnForMultitask`` (100 answers + box)
at ``--image`` px. It is exported with :func:`vlcoattn.export.export_onnx`. Inputs: the 5 bundled
photos with questions, cycled to ``--batch`` pairs, prepared by the saved processor. Timed: the
forward pass alone (eager: ``model(**inputs)`` under ``inference_mode``; ONNX Runtime: ``session.run``,
CPU provider), both on ``--threads`` threads, medians of interleaved runs; each ratio is against
eager at the same batch size. Also printed: max |ONNX Runtime - eager| of the logits and boxes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from transformers import AutoTokenizer

from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.export import ONNX_FILE, export_onnx
from vlcoattn.loading import load_model_dir
from vlcoattn.models import VLCoAttnConfig, VLCoAttnForMultitask, VLCoAttnProcessor
from vlcoattn.text import CooBertConfig
from vlcoattn.utils.reporting import machine, markdown_table

from timing import interleaved_medians

PAIRS = [
    ("astronaut", "what is the woman wearing?"),
    ("coffee", "is there a spoon on the saucer?"),
    ("chelsea", "what animal is this?"),
    ("china", "the building on the left"),
    ("flower", "what color are the petals?"),
]


def build_demo_model(out: Path, image: int) -> Path:
    """The demo-size multitask model (random weights) saved with its processor in ``out``."""
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    text = CooBertConfig(vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, shared_key_dim=192, max_position_embeddings=512)
    torch.manual_seed(0)
    model = VLCoAttnForMultitask(VLCoAttnConfig(
        text_config=text, vision_config={"backbone": "tf_efficientnet_lite0", "image_size": [image, image]},
        coattention_config={"num_layers": 2}, heads_config={"answer_vocab": [f"answer {i}" for i in range(100)]},
    ))
    model.save_pretrained(out)
    VLCoAttnProcessor.for_model(model, tok, max_text_len=32).save_pretrained(out)
    return out


@torch.inference_mode()
def eager(model: torch.nn.Module, inputs: dict[str, torch.Tensor]):
    return model(**inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a saved image-text model dir")
    parser.add_argument("--image", type=int, default=128, help="input size of the built model (default 128)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or build_demo_model(Path(tmp) / "model", args.image)
        export_onnx(model_dir, Path(tmp) / "onnx")
        session = onnxruntime.InferenceSession(str(Path(tmp) / "onnx" / ONNX_FILE), options,
                                               providers=["CPUExecutionProvider"])
        model, processor, _ = load_model_dir(model_dir)
    pairs = [(str(sample_photo(name)), text) for name, text in PAIRS]
    pairs = (pairs * (args.batch // len(pairs) + 1))[: args.batch]
    batches = {1: pairs[:1], len(pairs): pairs}
    fns, inputs = {}, {}
    for B, rows in batches.items():
        enc = processor(images=[p for p, _ in rows], text=[t for _, t in rows])
        inputs[B] = {k: v for k, v in enc.items() if k != "letterbox"}
        feed = {k: v.numpy() for k, v in inputs[B].items()}
        fns[f"eager, batch {B}"] = lambda x=inputs[B]: eager(model, x)
        fns[f"onnxruntime, batch {B}"] = lambda f=feed: session.run(["logits", "pred_boxes"], f)
    t = interleaved_medians(fns, repeats=args.repeats, warmup=1)

    rows = []
    for B, x in inputs.items():
        out = eager(model, x)
        got = session.run(["logits", "pred_boxes"], {k: v.numpy() for k, v in x.items()})
        diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, (out.logits, out.pred_boxes)))
        for runtime in ("eager", "onnxruntime"):
            seconds = t[f"{runtime}, batch {B}"]
            rows.append([runtime, B, f"{seconds * 1e3:.1f}", f"{seconds / B * 1e3:.1f}",
                         f"{t[f'eager, batch {B}'] / seconds:.2f}", f"{diff:.1e}" if runtime != "eager" else ""])
    size = processor.image_processor.canvas_size
    print(f"Machine: {machine()}; onnxruntime {onnxruntime.__version__} ({args.threads} intra-op threads)")
    print(f"Model: {type(model).__name__} from {args.model or 'the demo build'}, input {size[0]}x{size[1]}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, median of {args.repeats}")
    print(markdown_table(["runtime", "batch", "ms / call", "ms / pair", "speed vs eager", "max abs diff, logits and boxes"],
                         rows))


if __name__ == "__main__":
    main()
