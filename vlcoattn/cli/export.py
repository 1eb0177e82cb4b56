"""Export a saved model to ONNX, to run with onnxruntime (and without torch).

    vlcoattn-export --model runs/demo/final --out runs/demo/onnx

Writes ``model.onnx`` (dynamic batch size and text length), the saved processor or tokenizer,
``export.json`` (task, inputs, named outputs, preprocessing, answer / label names) and
``vlcoattn_runtime.py`` (answers, boxes and labels with numpy, Pillow, tokenizers and onnxruntime).
Takes VQA, grounding, multitask and text-classification model dirs and bare CooBERT encoders; the
export is checked against eager PyTorch before the command returns. Library: ``vlcoattn.export``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import transformers

from vlcoattn.export import export_onnx
from vlcoattn.utils.cli import ArgumentParser, fail, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="vlcoattn-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="save_pretrained directory (model + processor or tokenizer)")
    parser.add_argument("--out", required=True, help="output directory (created; its export files are replaced)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="vlcoattn-export: %(levelname)s: %(message)s", stream=sys.stderr)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        report = export_onnx(args.model, args.out, opset=args.opset)
    except ImportError as e:  # the optional onnx extra is missing
        fail(parser.prog, str(e))
    print(f"exported {args.model} -> {report.out_dir}")
    print("\n".join(report.lines()))
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-export`` command."""
    run_cli(main)


if __name__ == "__main__":
    cli()
