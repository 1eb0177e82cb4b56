#!/usr/bin/env python
"""What can a backbone see? A linear probe of its frozen features under each object's box, per level.

Installed as ``vlcoattn-probe-features``; the code is :mod:`vlcoattn.cli.probe_features`.
"""

from vlcoattn.cli.probe_features import cli

if __name__ == "__main__":
    cli()
