"""The read side of the data: shards -> decoded, augmented, collated batches for training and evaluation.

``shards`` finds and counts a source's shards (dataset.json, tar headers), ``loader`` streams them
resumably over ranks and workers, ``pipeline`` decodes and collates a sample, ``transforms`` holds
the letterbox and augmentations, ``loader_config`` the loader's options. The read side imports the
shared sample format (``vlcoattn.data.schema``, ``image``, ``answers``), never the write side. The
public names are re-exported by :mod:`vlcoattn.data`.
"""
