"""Causal CooBERT (D~k = D/2) vs GPT-2 of the same shape: held-out perplexity, generation speed, KV cache.

    python benchmarks/lm.py [--data data/bbc-lm] [--tokenizer data/tok-bbc-bpe8k] [--steps 300]

Data: BBC News paragraphs, 10% of the documents held out (``make_shards.py text --test-fraction 0.1
--seed 0 --min-chars 20``); tokenizer: byte-level BPE (8k) trained on the training documents only
(``tools/train_tokenizer.py``). Both are written when missing. Models, trained one run each by
``vlcoattn.train.train`` with ``configs/lm.yaml`` (same tokenizer, data order, steps, batch, learning
rate, schedule, dropout and seed):

- CooBERT causal LM (post-LN BERT layers with collaborative attention, D~k = D/2) from the config;
- transformers' ``GPT2LMHeadModel`` with the same width, depth, heads, FFN width, GELU, positions
  and vocabulary (pre-LN, tied embeddings).

Reported: test perplexity (``vlcoattn.eval``, same tokens for both), greedy generation tokens/s with
and without the KV cache (median of interleaved runs; prompts of 8 tokens, ``--new-tokens`` forced
with ``min_new_tokens``: a speed figure, past the trained length of 64 the text is not meaningful),
and KV-cache bytes per token measured on the actual cache tensors (fp32, all layers).
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from vlcoattn.assets import bbc_news_dir
from vlcoattn.data import convert_text_split, text_records
from vlcoattn.text import output_cache
from vlcoattn.text.tokenizer import train_tokenizer
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import train
from vlcoattn.utils.reporting import machine, markdown_table

from timing import interleaved_medians

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "lm.yaml"
PROMPT_TOKENS = 8


def prepare(data: Path, tokenizer_dir: Path) -> None:
    """Write the held-out-document split and train the tokenizer on its train part, if missing."""
    if not (data / "test" / "dataset.json").is_file():
        convert_text_split([bbc_news_dir()], data, test_fraction=0.1, seed=0, min_chars=20, progress=False)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        train_tokenizer(data / "train", tokenizer_dir, kind="bpe", vocab_size=8000)


def gpt2_like(job: JobConfig, tokenizer) -> GPT2LMHeadModel:
    """GPT-2 with the width, depth, heads, FFN, positions, dropout and vocabulary of the CooBERT config."""
    c = job.model.config
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=c["max_position_embeddings"], n_embd=c["hidden_size"],
        n_layer=c["num_hidden_layers"], n_head=c["num_attention_heads"], n_inner=c["intermediate_size"],
        activation_function="gelu", resid_pdrop=c["hidden_dropout_prob"], embd_pdrop=c["hidden_dropout_prob"],
        attn_pdrop=c["attention_probs_dropout_prob"], bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(job.run.seed)
    return GPT2LMHeadModel(config)


def kv_bytes_per_token(model, length: int = 32) -> tuple[int, int]:
    """(bytes per token over all layers, of which keys) of the model's actual KV cache."""
    ids = torch.randint(1, model.config.vocab_size, (1, length))
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
    keys = sum(layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)
    values = sum(layer.values.numel() * layer.values.element_size() for layer in cache.layers)
    return (keys + values) // length, keys // length


def prompts(data: Path, tokenizer, batch: int) -> torch.Tensor:
    """(batch, 1 + PROMPT_TOKENS): bos + the first tokens of held-out paragraphs (no padding needed)."""
    rows = []
    for record in text_records(data / "test"):
        ids = tokenizer(record["text"])["input_ids"]
        if len(ids) > PROMPT_TOKENS:
            rows.append(ids[: PROMPT_TOKENS + 1])
        if len(rows) == batch:
            return torch.tensor(rows)
    raise ValueError(f"fewer than {batch} held-out paragraphs of {PROMPT_TOKENS} tokens")


def generate(model, ids: torch.Tensor, new: int, use_cache: bool, pad: int) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, use_cache=use_cache, pad_token_id=pad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/bbc-lm"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tok-bbc-bpe8k"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-lm"),
                        help="run dirs; finished runs found there are reused (delete them to retrain)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--new-tokens", type=int, default=120, help="generated tokens per timing run")
    parser.add_argument("--batches", default="1,8", help="generation batch sizes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prepare(args.data, args.tokenizer)
    overrides = [f"data.train=[{args.data / 'train'}]", f"data.test={{test: [{args.data / 'test'}]}}",
                 f"model.tokenizer={args.tokenizer}", "run.progress=false"]
    overrides += [f"train.steps={args.steps}"] if args.steps else []
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    models, perplexity = {}, {}
    for name in ("coobert", "gpt2"):
        run_dir = args.out / name
        if not (run_dir / "final_metrics.json").is_file():
            job = load_config(JobConfig, CONFIG, [*overrides, f"run.dir={run_dir}"])
            model = gpt2_like(job, tokenizer) if name == "gpt2" else None
            train(job, model=model, tokenizer=tokenizer if model is not None else None)
        perplexity[name] = json.loads((run_dir / "final_metrics.json").read_text())["test"]["perplexity"]
        models[name] = AutoModelForCausalLM.from_pretrained(args.out / name / "final").eval()
    c = load_config(JobConfig, CONFIG).model.config
    shape = (f"D={c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads, "
             f"FFN {c['intermediate_size']}, CooBERT D~k={c['shared_key_dim']}, vocab {len(tokenizer)}")
    rows = []
    for name, model in models.items():
        kv, keys = kv_bytes_per_token(model)
        rows.append([name, f"{model.num_parameters():,}", f"{perplexity[name]:.1f}", kv, keys])
    print(f"machine: {machine()}; {shape}\n")
    print(markdown_table(["model", "params", "test perplexity", "KV B/token (fp32)", "of which keys"], rows))
    speed = []
    for batch in (int(b) for b in args.batches.split(",")):
        ids = prompts(args.data, tokenizer, batch)
        fns = {(name, cache): partial(generate, model, ids, args.new_tokens, cache, tokenizer.pad_token_id)
               for name, model in models.items() for cache in (True, False)}
        with torch.inference_mode():
            times = interleaved_medians(fns, repeats=args.repeats, warmup=1)
        for (name, cache), t in times.items():
            ratio = t / times[("gpt2", cache)]
            speed.append([name, batch, "yes" if cache else "no", f"{batch * args.new_tokens / t:.0f}", f"{ratio:.2f}"])
    print(f"\ngreedy generation, prompt {PROMPT_TOKENS} tokens + bos, {args.new_tokens} new tokens, "
          f"median of {args.repeats}\n")
    print(markdown_table(["model", "batch", "KV cache", "tokens/s", "time vs GPT-2"], speed))
    ids = prompts(args.data, tokenizer, 1)
    print(f"\nprompt: {tokenizer.decode(ids[0], skip_special_tokens=True)!r}")
    for name, model in models.items():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        print(f"{name}: {tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)!r}")


if __name__ == "__main__":
    main()
