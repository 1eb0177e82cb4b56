"""The write side of the data: sources -> checked samples -> shard directories with a dataset.json.

``sink`` writes schema-checked samples (:class:`~vlcoattn.data.ShardSink`), ``converters`` turn
public formats (JSONL, VQA v2, RefCOCO, text, CLEVR-lite) into shard directories and register their
``vlcoattn-make-shards`` sub-commands, ``synthetic`` generates CLEVR-lite scenes, ``inspection``
reports what a shard directory holds and what the loader would reject. It imports the shared sample
format and, to find and read existing shards, the read side's ``shards`` and ``loader``. The public
names are re-exported by :mod:`vlcoattn.data`.
"""
