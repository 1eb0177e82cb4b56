"""Model cards: every model dir a tiny real training run writes has a README.md that parses as a Hub
card, with the task's pipeline tag, the training data, and final_metrics.json's figures; its load
snippet runs; and push_model_dir uploads exactly the dir, card included, with nothing on the network."""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, constants, metadata_load, metadata_save
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from vlcoattn.assets import sample_photo
from vlcoattn.data import write_synthetic
from vlcoattn.data.write.converters.text import convert_text, convert_textcls
from vlcoattn.data.write.synthetic import SyntheticConfig
from vlcoattn.hub import push_model_dir
from vlcoattn.text import CooBertConfig, CooBertModel
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.model_card import base_models, write_model_card
from vlcoattn.train.trainer import train

from helpers import FakeHub

# the Hub's pipeline tag of each headline metric, written out here (not read from the task registry)
METRIC_TAGS = {"vqa_acc": "visual-question-answering", "acc@0.5": "zero-shot-object-detection",
               "mean_iou": "zero-shot-object-detection", "accuracy": "text-classification",
               "macro_f1": "text-classification", "perplexity": "text-generation"}


@pytest.fixture(scope="module")
def root(tmp_path_factory, minilm_tokenizer) -> Path:
    """A tiny CooBERT dir (MiniLM's tokenizer), CLEVR-lite at 64 px, a labelled text folder and a corpus."""
    root = tmp_path_factory.mktemp("cards")
    config = CooBertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, shared_key_dim=16, max_position_embeddings=64)
    torch.manual_seed(0)
    CooBertModel(config).save_pretrained(root / "coobert-tiny")
    minilm_tokenizer.save_pretrained(root / "coobert-tiny")
    write_synthetic(root / "clevr", 12, seed=0, config=SyntheticConfig(image_size=64), progress=False)
    for label, words in (("sport", "the team won the match"), ("business", "shares in the bank fell")):
        (root / "texts" / label).mkdir(parents=True)
        for i in range(6):
            (root / "texts" / label / f"{i}.txt").write_text(f"{words} on day {i}")
    convert_textcls(root / "texts", root / "cls", progress=False)
    (root / "corpus").mkdir()
    (root / "corpus" / "a.txt").write_text("\n\n".join(f"The market rose {i} points today." for i in range(12)))
    convert_text([root / "corpus"], root / "lm", progress=False)
    return root


def _run(root: Path, name: str, task: str, model: dict, data: dict, **train_over) -> Path:
    cfg = {"task": task, "run": {"dir": str(root / "runs" / name), "seed": 0, "log_every": 1, "progress": False},
           "model": model, "data": {"batch_size": 4, "eval_batch_size": 16, "max_text_len": 24, **data},
           "optim": {"lr": 1e-3}, "train": {"steps": 2, "report": False, **train_over}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    train(load_config(JobConfig, root / f"{name}.yaml"))
    return root / "runs" / name


@pytest.fixture(scope="module")
def vl_run(root) -> Path:
    """vqa+ground, evaluated on val and test, with a checkpoint at step 1."""
    model = {"text": str(root / "coobert-tiny"), "convert_from": None, "backbone": "convnext_atto",
             "pretrained_backbone": False, "image_size": 64,
             "config": {"coattention_config": {"num_layers": 1}, "vision_config": {"out_indices": [-2]}}}
    data = {"train": [str(root / "clevr" / "train")], "val": [str(root / "clevr" / "val")],
            "test": {"test": [str(root / "clevr" / "test")]}}
    return _run(root, "vl", "vqa+ground", model, data, save_every=1)


@pytest.fixture(scope="module")
def cls_run(root) -> Path:
    model = {"text": str(root / "coobert-tiny"), "convert_from": None}
    return _run(root, "cls", "cls", model, {"train": [str(root / "cls")], "test": {"test": [str(root / "cls")]}})


@pytest.fixture(scope="module")
def lm_run(root) -> Path:
    model = {"convert_from": None, "tokenizer": str(root / "coobert-tiny"),
             "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                        "max_position_embeddings": 64}}
    return _run(root, "lm", "lm", model, {"train": [str(root / "lm")], "test": {"test": [str(root / "lm")]}})


@pytest.fixture(scope="module")
def gpt2_run(root, minilm_tokenizer) -> Path:
    """A transformers GPT-2 handed to the trainer, as the LM benchmark does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = copy.copy(minilm_tokenizer)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id)
    cfg = {"task": "lm", "run": {"dir": str(root / "runs" / "gpt2"), "progress": False},
           "data": {"train": [str(root / "lm")], "test": {"test": [str(root / "lm")]}, "batch_size": 4,
                    "max_text_len": 24}, "train": {"steps": 2, "report": False}}
    (root / "gpt2.yaml").write_text(yaml.safe_dump(cfg))
    train(load_config(JobConfig, root / "gpt2.yaml"), model=GPT2LMHeadModel(config), tokenizer=tokenizer)
    return root / "runs" / "gpt2"


def _figures(card: ModelCard) -> dict[tuple[str, str], tuple[str, float]]:
    """(split, metric) -> (the Hub task, value) of the card's model-index."""
    return {(r.dataset_split, r.metric_type): (r.task_type, r.metric_value) for r in card.data.eval_results or []}


def _expected_figures(run: Path, names: tuple[str, ...]) -> dict[tuple[str, str], tuple[str, float]]:
    final = json.loads((run / "final_metrics.json").read_text())
    return {(split, n): (METRIC_TAGS[n], m[n]) for split, m in final.items() for n in names if n in m}


def _check_header(run: Path, pipeline_tag: str, datasets: list[str], metrics: tuple[str, ...]) -> ModelCard:
    meta = metadata_load(run / "final" / "README.md")
    assert meta["library_name"] == "vlcoattn" and meta["pipeline_tag"] == pipeline_tag
    assert {"vlcoattn", "transformers"} <= set(meta["tags"]) and meta["datasets"] == datasets
    card = ModelCard.load(run / "final" / "README.md")
    expected = _expected_figures(run, metrics)
    assert expected and _figures(card) == expected
    assert card.data.model_name == run.name
    return card


def _run_snippet(card: ModelCard, folder: Path, monkeypatch) -> list[str]:
    """Execute the card's python block in ``folder`` (which holds photo.jpg); the lines it prints."""
    (block,) = re.findall(r"```python\n(.*?)```", card.text, re.S)
    shutil.copy(sample_photo("coffee"), folder / "photo.jpg")
    monkeypatch.chdir(folder)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "model card", "exec"), {})
    return out.getvalue().splitlines()


def test_vl_card_has_the_hub_header_and_final_metrics(vl_run):
    card = _check_header(vl_run, "visual-question-answering", ["synthetic"], ("vqa_acc", "acc@0.5", "mean_iou"))
    assert "zero-shot-object-detection" in card.data.tags and "convnext_atto" in card.data.tags
    assert card.data.base_model is None  # random text encoder and backbone: nothing to name
    final = json.loads((vl_run / "final_metrics.json").read_text())
    # the image-blind baselines beside the model's figures, as the report prints them
    row = f"| val | vqa_acc | {final['val']['vqa_acc']:.4f} | " + " | ".join(
        f"{final['val'][f'{b}/vqa_acc']:.4f}" for b in ("answer_prior", "question_prior"))
    assert row in card.text
    assert "| batch per step | 4 |" in card.text and "| steps | 2 |" in card.text
    assert yaml.safe_load(card.text.split("```yaml\n")[1].split("```")[0])["task"] == "vqa+ground"


def test_a_checkpoint_card_has_no_figures(vl_run):
    model_dir = vl_run / "checkpoints" / "step-00000001" / "model"
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.pipeline_tag == "visual-question-answering" and card.data.eval_results is None
    assert "Not evaluated" in card.text and f'model_dir = "{model_dir}"' in card.text
    assert "| steps | 1 |" in card.text


def test_vl_card_snippet_runs_and_its_two_paths_agree(vl_run, tmp_path, monkeypatch):
    card = ModelCard.load(vl_run / "final" / "README.md")
    assert f'model_dir = "{vl_run / "final"}"' in card.text  # the final place, not the temporary dir
    vqa_pipe, vqa_predictor, box_pipe, box_predictor = map(ast.literal_eval, _run_snippet(card, tmp_path, monkeypatch))
    vocab = json.loads((vl_run / "final" / "config.json").read_text())["heads_config"]["answer_vocab"]
    assert [a["answer"] for a in vqa_pipe] == [a["answer"] for a in vqa_predictor[:3]] and vqa_pipe[0]["answer"] in vocab
    assert len(box_pipe) == 4 and box_pipe == box_predictor


def test_text_classification_card(cls_run, tmp_path, monkeypatch):
    card = _check_header(cls_run, "text-classification", ["textcls"], ("accuracy", "macro_f1"))
    pipe, label = _run_snippet(card, tmp_path, monkeypatch)
    assert label in ("business", "sport") and ast.literal_eval(pipe)[0]["label"] == label
    job = load_config(JobConfig, cls_run / "config.yaml")  # the resolved config the run saved
    with pytest.raises(ValueError, match="split 'holdout', which the job does not evaluate"):
        write_model_card(cls_run / "final", job, {"holdout": {"accuracy": 0.5}})


def test_language_model_card(lm_run, tmp_path, monkeypatch):
    card = _check_header(lm_run, "text-generation", ["text"], ("perplexity",))
    pipe_text, *_ = _run_snippet(card, tmp_path, monkeypatch)  # the completion may be empty or span lines
    assert pipe_text.startswith("The market")


def test_a_transformers_model_handed_to_the_trainer_is_carded_as_transformers(gpt2_run, tmp_path, monkeypatch):
    """Its dir loads with transformers alone, and the job's model options (MiniLM by default) did not build it."""
    card = ModelCard.load(gpt2_run / "final" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert "gpt2" in card.data.tags and card.data.base_model is None
    assert "`GPT2LMHeadModel`" in card.text and "| started from | a model the caller built |" in card.text
    assert _figures(card) == _expected_figures(gpt2_run, ("perplexity",))
    pipe_text, *_ = _run_snippet(card, tmp_path, monkeypatch)
    assert pipe_text.startswith("The market")


def test_base_models_name_the_hub_models_the_weights_start_from(tmp_path):
    def job(task="vqa+ground", **model) -> JobConfig:
        cfg = JobConfig(task=task)
        for key, value in model.items():
            setattr(cfg.model, key, value)
        return cfg

    minilm, lite0 = "sentence-transformers/all-MiniLM-L6-v2", "timm/tf_efficientnet_lite0.in1k"
    assert base_models(job()) == [minilm, lite0]  # the defaults: converted MiniLM + EfficientNet-Lite0
    assert base_models(job(pretrained_text=False)) == [lite0]
    assert base_models(job(backbone="convnext_atto", backbone_pretrained_file="mine.safetensors")) == [minilm]
    assert base_models(job(pretrained_backbone=False, convert_from="some/bert_dir")) == []
    assert base_models(job("cls")) == [minilm]
    (tmp_path / "README.md").write_text("# a fine-tuned model\n")
    metadata_save(tmp_path / "README.md", {"base_model": ["a/b", "c/d"]})
    assert base_models(job("vqa", pretrained=str(tmp_path))) == ["a/b", "c/d"]


def _sub_dtypes_dropped(config: dict) -> dict:
    """A config less its sub-configs' ``dtype`` (a load + save adds float32 to those that had none)."""
    return {k: {n: x for n, x in v.items() if n != "dtype"} if isinstance(v, dict) else v for k, v in config.items()}


def test_push_model_dir_uploads_the_dir_with_its_card_offline(vl_run, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a socket tried to connect")

    assert constants.HF_HUB_OFFLINE  # conftest: transformers' remote card look-up answers "none" locally
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    hub = FakeHub(monkeypatch)
    final = vl_run / "final"
    info = push_model_dir(final, "someone/tiny-vl")
    assert info.repo_url.repo_id == "someone/tiny-vl" and len(hub.commits) == 3
    repo = hub.files
    assert set(repo) == {p.name for p in final.iterdir()}  # exactly the dir: config, weights, processor, card, task
    assert repo["README.md"] == (final / "README.md").read_bytes()
    assert repo["vlcoattn_task.json"] == (final / "vlcoattn_task.json").read_bytes()
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        pushed_config, saved_config = json.loads(repo[name]), json.loads((final / name).read_text())
        assert _sub_dtypes_dropped(pushed_config) == _sub_dtypes_dropped(saved_config), name
    pushed, saved = load_safetensors(repo["model.safetensors"]), load_file(final / "model.safetensors")
    assert pushed.keys() == saved.keys() and all(torch.equal(pushed[k], saved[k]) for k in saved)


def test_push_model_dir_refuses_a_dir_without_its_card(cls_run, tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    shutil.copytree(cls_run / "final", tmp_path / "final", ignore=shutil.ignore_patterns("README.md"))
    with pytest.raises(FileNotFoundError, match=r"has no README\.md"):
        push_model_dir(tmp_path / "final", "someone/tiny-cls")
    assert hub.commits == []  # nothing was uploaded before the check
