#!/usr/bin/env python
"""Write webdataset shard directories (shard-NNNNNN.tar + dataset.json) from real dataset layouts.

Installed as ``vlcoattn-make-shards``; the code is :mod:`vlcoattn.cli.make_shards`.
"""

from vlcoattn.cli.make_shards import cli

if __name__ == "__main__":
    cli()
