"""BBC News topic classification: CooBERT (D~k = 384 and 192) vs BERT vs TF-IDF, on one fixed split.

    python benchmarks/textcls.py [--data data/bbc] [--steps 112] [--only tfidf]

Split: ``make_shards.py textcls --test-fraction 0.2 --seed 0`` (stratified; written to ``--data`` when
missing). Models, trained one run each by ``vlcoattn.train.train`` with ``configs/textcls_bbc.yaml``
(same steps, batch, learning rate, schedule, text length, seed and data order):

- CooBERT from MiniLM-L6-H384 converted at D~k = 384 (exact) and D~k = 192 (CP), fine-tuned;
- transformers' ``BertForSequenceClassification`` from the same MiniLM weights (the baseline);
- TF-IDF (word 1-2 grams, sublinear tf) + logistic regression (scikit-learn), on the full articles and
  on the same first ``max_text_len`` tokens the transformers see.

Reported on the test split: accuracy and macro-F1 (``vlcoattn.eval.classification_metrics``),
training samples/s (median of the logged windows) and parameters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForSequenceClassification

from vlcoattn.assets import bbc_news_dir, minilm_dir
from vlcoattn.data import DatasetInfo, convert_textcls_split, text_records
from vlcoattn.eval import classification_metrics
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.trainer import train
from vlcoattn.utils.reporting import machine, markdown_table

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "textcls_bbc.yaml"


def load_split(data: Path) -> dict[str, tuple[list[str], list[str]]]:
    """split -> (texts, labels), writing the seeded split first if ``data`` has none."""
    if not (data / "test" / "dataset.json").is_file():
        convert_textcls_split(bbc_news_dir(), data, test_fraction=0.2, seed=0, progress=False)
    out = {}
    for split in ("train", "test"):
        records = list(text_records(data / split))
        out[split] = ([r["text"] for r in records], [r["label"] for r in records])
    return out


def truncated(split: dict[str, tuple[list[str], list[str]]], max_len: int) -> dict[str, tuple[list[str], list[str]]]:
    """The split with each text cut to what the fine-tuned models see: its first ``max_len`` MiniLM tokens."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    return {
        name: (tokenizer.batch_decode(tokenizer(texts, truncation=True, max_length=max_len)["input_ids"],
                                      skip_special_tokens=True), labels)
        for name, (texts, labels) in split.items()
    }


def tfidf_baseline(split: dict[str, tuple[list[str], list[str]]]) -> tuple[dict[str, float], float, int]:
    """(test metrics, fit seconds, features) of TF-IDF + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    (train_x, train_y), (test_x, test_y) = split["train"], split["test"]
    labels = sorted(set(train_y))
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(C=10.0, max_iter=2000),
    )
    t = time.perf_counter()
    model.fit(train_x, [labels.index(y) for y in train_y])
    seconds = time.perf_counter() - t
    metrics = classification_metrics(model.predict(test_x).tolist(), [labels.index(y) for y in test_y], len(labels))
    return metrics, seconds, len(model[0].vocabulary_)


def finetune(name: str, data: Path, out: Path, overrides: list[str]) -> tuple[dict[str, float], float, int]:
    """(test metrics, median training samples/s, parameters) of one trainer run of the config."""
    job = load_config(JobConfig, CONFIG, [
        f"run.dir={out / name}", f"data.train=[{data / 'train'}]", f"data.test={{test: [{data / 'test'}]}}",
        "run.progress=false", *overrides,
    ])
    model = tokenizer = None
    if name == "bert":
        labels = DatasetInfo.load(data / "train").label_vocab
        model = BertForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    result = train(job, model=model, tokenizer=tokenizer)
    logged = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    speed = statistics.median(r["samples_per_s"] for r in logged if r["split"] == "train")
    params = AutoModelForSequenceClassification.from_pretrained(out / name / "final").num_parameters()
    return result.metrics["test"], speed, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/bbc"), help="split dir (written if missing)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-textcls"), help="run dirs")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--only", choices=("tfidf", "all"), default="all")
    args = parser.parse_args()
    split = load_split(args.data)
    max_len = load_config(JobConfig, CONFIG).data.max_text_len
    rows = []
    for name, texts in (("full articles", split), (f"first {max_len} tokens", truncated(split, max_len))):
        metrics, seconds, features = tfidf_baseline(texts)
        rows.append([f"TF-IDF + logistic regression, {name}", f"{metrics['accuracy']:.4f}",
                     f"{metrics['macro_f1']:.4f}", f"fit {seconds:.0f} s", f"{features:,} features"])
    if args.only == "all":
        steps = [f"train.steps={args.steps}"] if args.steps else []
        for name, label, extra in [
            ("bert", "BertForSequenceClassification (MiniLM)", []),
            ("coobert-k384", "CooBERT D~k=384 (exact conversion)", ["model.shared_key_dim=384"]),
            ("coobert-k192", "CooBERT D~k=192 (CP conversion)", ["model.shared_key_dim=192"]),
        ]:
            metrics, speed, params = finetune(name, args.data, args.out, steps + extra)
            rows.append([label, f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}", f"{speed:.0f}",
                         f"{params:,}"])
    n_train, n_test = len(split["train"][0]), len(split["test"][0])
    print(f"machine: {machine()}; BBC News, {n_train} train / {n_test} test articles (seed 0)\n")
    print(markdown_table(["model", "test accuracy", "test macro-F1", "training samples/s", "size"], rows))


if __name__ == "__main__":
    main()
