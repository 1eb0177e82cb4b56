#!/usr/bin/env python
"""Train a byte-level BPE (GPT-2 style) or WordPiece (BERT style) tokenizer on your own text.

Installed as ``vlcoattn-train-tokenizer``; the code is :mod:`vlcoattn.cli.train_tokenizer`.
"""

from vlcoattn.cli.train_tokenizer import cli

if __name__ == "__main__":
    cli()
