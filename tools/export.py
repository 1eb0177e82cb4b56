#!/usr/bin/env python
"""Export a saved model dir to ONNX, with its processor and a runner that needs no torch.

Installed as ``vlcoattn-export``; the code is :mod:`vlcoattn.cli.export`.
"""

from vlcoattn.cli.export import cli

if __name__ == "__main__":
    cli()
