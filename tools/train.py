#!/usr/bin/env python
"""Train a model from a YAML job config, on one process or under torchrun (DDP).

Installed as ``vlcoattn-train``; the code is :mod:`vlcoattn.cli.train`.
"""

from vlcoattn.cli.train import cli

if __name__ == "__main__":
    cli()
