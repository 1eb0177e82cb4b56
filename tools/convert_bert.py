#!/usr/bin/env python
"""Convert a local HF BERT checkpoint dir into a CooBERT dir (collaborative attention).

Installed as ``vlcoattn-convert-bert``; the code is :mod:`vlcoattn.cli.convert_bert`.
"""

from vlcoattn.cli.convert_bert import cli

if __name__ == "__main__":
    cli()
