#!/usr/bin/env python
"""Run a saved model on image-text pairs (VQA / grounding) or texts (classification / generation).

Installed as ``vlcoattn-infer``; the code is :mod:`vlcoattn.cli.infer`.
"""

from vlcoattn.cli.infer import cli

if __name__ == "__main__":
    cli()
