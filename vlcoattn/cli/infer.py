"""Run a saved model on image-text pairs (VQA / grounding / phrase grounding) or texts (classification / generation).

    python tools/infer.py --model runs/ground --image photo.jpg --text "the cup on the left" --viz out.png
    python tools/infer.py --model runs/phrase --image photo.jpg --text "a cup on a red plate" \
        --phrase "a cup" --phrase "a red plate" --viz out.png
    python tools/infer.py --model runs/vqa --input pairs.jsonl --output preds.jsonl --batch-size 16
    python tools/infer.py --model runs/bbc-cls --task classify --text "Shares fell sharply ..."
    python tools/infer.py --model runs/lm --task generate --prompt "the market" --max-new-tokens 20

Prints one JSON object (single input) or writes one JSON line per input row (--input). Library:
``vlcoattn.infer.Predictor`` (load once, predict many) and ``vlcoattn.infer.draw_prediction``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import transformers

from vlcoattn.infer import DTYPES, TASKS, PhrasePredictor, Predictor, draw_prediction, predict_jsonl
from vlcoattn.utils.cli import ArgumentParser, run_cli


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"must be >= 1, got {number}")
    return number


def span(value: str) -> list[int]:
    """``START:END`` -> [START, END]."""
    start, sep, end = value.partition(":")
    if not sep or not start.strip().isdigit() or not end.strip().isdigit():
        raise ValueError(f"a span is START:END (character offsets), got {value!r}")
    return [int(start), int(end)]


def to_json(result: dict) -> str:
    """Indented JSON with one line per top-level field and per token (``json.dumps(indent=2)`` puts every
    number of every token on its own line)."""
    fields = []
    for key, value in result.items():
        if key == "tokens" and value:
            tokens = ",\n".join(f"    {json.dumps(t, ensure_ascii=False)}" for t in value)
            fields.append(f'  "tokens": [\n{tokens}\n  ]')
        else:
            fields.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(fields) + "\n}"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="infer.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="save_pretrained directory (model + tokenizer)")
    parser.add_argument("--task", choices=TASKS, default="auto",
                        help="what to predict (default auto: whatever the model's heads give)")
    one = parser.add_argument_group("one input")
    one.add_argument("--image", help="image file (image-text models)")
    one.add_argument("--text", help="question / referring expression / text to classify")
    one.add_argument("--prompt", help="prompt to continue (--task generate; default: --text)")
    one.add_argument("--phrase", action="append", metavar="PHRASE",
                     help="a phrase of the caption --text to box (phrase grounding; repeat for each; its first "
                          "occurrence)")
    one.add_argument("--span", action="append", type=span, metavar="START:END",
                     help="a phrase as the characters [START, END) of --text (phrase grounding; repeatable)")
    many = parser.add_argument_group("many inputs")
    many.add_argument("--input", help='JSONL rows {"image": ..., "text": ..., "id": ...} (or {"text"} / {"prompt"})')
    many.add_argument("--output", help="JSONL predictions, one line per input row (default: stdout)")
    many.add_argument("--batch-size", type=positive, default=8, help="rows per forward pass (default 8)")
    many.add_argument("--image-root", help="folder that relative image paths start from (default: the input's)")
    many.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    out = parser.add_argument_group("output")
    out.add_argument("--top-k", type=positive, default=None,
                     help="answers / labels listed (default 5); with --task generate: top-k sampling")
    out.add_argument("--viz", help="write a PNG: the image, the box and answers, per-word prior heatmaps")
    out.add_argument("--viz-tokens", nargs="+", metavar="WORD", help="words to draw (default: content words)")
    out.add_argument("--viz-heads", action="store_true", help="one heatmap per word and attention head")
    out.add_argument("--viz-max-words", type=positive, default=8, help="cap on default words (default 8)")
    gen = parser.add_argument_group("generation (--task generate)")
    gen.add_argument("--max-new-tokens", type=positive, default=20)
    gen.add_argument("--temperature", type=float, default=None, help="> 0: sample (default: greedy)")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling")
    gen.add_argument("--num-beams", type=positive, default=1, help="beam search with this many beams")
    gen.add_argument("--seed", type=int, default=None, help="seed for sampling")
    run = parser.add_argument_group("runtime")
    run.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    run.add_argument("--dtype", choices=list(DTYPES), default="float32")
    run.add_argument("--max-pixels", type=positive, default=None,
                     help="refuse images with more pixels (decompression bombs; default: the saved processor's, 64M)")
    return parser


def check_args(parser: ArgumentParser, args) -> None:
    """Argument combinations, checked before anything is loaded."""
    if args.input is None:
        if args.output is not None:
            parser.error("--output needs --input")
        if args.text is None and args.prompt is None:
            parser.error("give --text (with --image for image-text models), --prompt, or --input FILE")
    elif any(v is not None for v in (args.image, args.text, args.prompt, args.viz, args.phrase, args.span)):
        parser.error("--input takes no --image / --text / --prompt / --phrase / --span / --viz (one row per line "
                     "instead)")
    if (args.viz_tokens or args.viz_heads) and args.viz is None:
        parser.error("--viz-tokens / --viz-heads need --viz OUT.png")


def phrase_arguments(args, predictor: Predictor) -> dict:
    """``{"phrases": [...]}`` from --phrase / --span for a model with a phrase head (which needs them for
    --task phrase, and for auto on a phrase grounding model), else {} (where they are an error)."""
    phrases = [*(args.phrase or []), *(args.span or [])]
    if not isinstance(predictor, PhrasePredictor):
        if phrases:
            raise ValueError(f"--phrase / --span: {args.model} is a {type(predictor.model).__name__}, not a phrase "
                             "grounding model")
        return {}
    if not phrases:
        if predictor.needs_phrases(predictor.resolve_task(args.task)):
            raise ValueError(f"{args.model} is a phrase grounding model: give the phrases of --text to box with "
                             "--phrase TEXT or --span START:END (repeatable)")
        return {}
    return {"phrases": phrases}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    logging.basicConfig(level=logging.WARNING, format="infer.py: %(levelname)s: %(message)s", stream=sys.stderr)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    predictor = Predictor.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_pixels=args.max_pixels)
    predictor.resolve_task(args.task)  # a task the model cannot do: one clear line before any input is read
    top_k = args.top_k or 5
    gen_kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      top_k=args.top_k, num_beams=args.num_beams, seed=args.seed)
    if args.input is not None:
        counts = predict_jsonl(
            predictor, args.input, args.output or sys.stdout, task=args.task, top_k=top_k,
            batch_size=args.batch_size, image_root=args.image_root, progress=not args.no_progress,
            generate_kwargs=gen_kwargs,
        )
        print(f"infer.py: {counts['ok']} of {counts['rows']} rows predicted, {counts['errors']} errors"
              + (f" -> {args.output}" if args.output else ""), file=sys.stderr)
        return 0

    if not predictor.spec.needs_images:
        if args.image is not None or args.viz is not None:
            raise ValueError(f"--image / --viz: {args.model} is a text-only {type(predictor.model).__name__}")
        result = predictor.predict_text(args.text, args.prompt, top_k, gen_kwargs)
    else:
        if args.image is None or args.text is None:
            raise ValueError(f"--image and --text are required: {args.model} is an image-text model")
        if args.viz is not None and not Path(args.viz).parent.is_dir():
            raise FileNotFoundError(f"--viz: folder {Path(args.viz).parent} does not exist")
        result = predictor.predict(args.image, args.text, task=args.task, top_k=top_k, **phrase_arguments(args, predictor))
        if args.viz is not None:
            draw_prediction(args.image, result, args.viz, words=args.viz_tokens, heads=args.viz_heads,
                            max_words=args.viz_max_words, max_pixels=predictor.max_pixels)
            result["viz"] = args.viz
    print(to_json(result))
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-infer`` command (and of ``tools/infer.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
