"""The command-line tools, installed as ``vlcoattn-*`` commands; ``tools/*.py`` run the same ``cli()``.

=========================  =====================================================================
command                    what it does
=========================  =====================================================================
vlcoattn-train             train from a YAML job config, one process or under torchrun
vlcoattn-evaluate          evaluate a saved model on shard dirs
vlcoattn-infer             answers / boxes / per-word priors for image-text pairs; text-only models
vlcoattn-make-shards       write webdataset shards from JSONL, VQA v2, RefCOCO, text, HF datasets, CLEVR-lite
vlcoattn-convert-bert      convert a BERT checkpoint into CooBERT
vlcoattn-train-tokenizer   train a WordPiece / byte-level BPE tokenizer on text
vlcoattn-probe-features    what a backbone's frozen features read of the objects in shards
vlcoattn-export            export a saved model to ONNX, with a runner that needs no torch
=========================  =====================================================================
"""
