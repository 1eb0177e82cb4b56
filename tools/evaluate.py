#!/usr/bin/env python
"""Evaluate a saved model (a ``final/`` or checkpoint ``model/`` dir) on shard dirs.

Installed as ``vlcoattn-evaluate``; the code is :mod:`vlcoattn.cli.evaluate`.
"""

from vlcoattn.cli.evaluate import cli

if __name__ == "__main__":
    cli()
