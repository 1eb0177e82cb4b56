"""Share a saved model dir on the Hugging Face Hub through transformers' own ``push_to_hub``.

    from vlcoattn.hub import push_model_dir
    push_model_dir("runs/demo/final", "your-name/vlcoattn-demo")

Three commits: the model's ``push_to_hub`` (config.json, model.safetensors), the processor's (or the
tokenizer's: processor_config.json, the tokenizer files), then the dir's model card (``README.md``, in
place of the generic card transformers writes) with its task file. A copy fetched with
``huggingface_hub.snapshot_download`` loads like the dir itself (``Predictor.from_pretrained``, the
pipelines).
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from .loading import TASK_FILE, load_model_dir

CARD_FILE = "README.md"  # the model card (vlcoattn.train.model_card writes it)


def push_model_dir(model_dir: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                   commit_message: str | None = None) -> CommitInfo:
    """Upload ``model_dir`` to the Hub repo ``repo_id`` (created if missing); returns the last commit.
    ``private``: for a new repo; ``token``: default the stored login; ``commit_message``: the model's commit."""
    model_dir = Path(model_dir)
    if not (model_dir / CARD_FILE).is_file():
        raise FileNotFoundError(f"model dir {model_dir} has no {CARD_FILE} (the trainer writes the model card; "
                                "vlcoattn.train.model_card.write_model_card writes one for a dir saved otherwise)")
    model, processor, _ = load_model_dir(model_dir)
    pushed = model.push_to_hub(repo_id, private=private, token=token, commit_message=commit_message)
    repo_id = pushed.repo_url.repo_id  # with the namespace the Hub gave it
    processor.push_to_hub(repo_id, token=token)
    files = [f for f in (CARD_FILE, TASK_FILE) if (model_dir / f).is_file()]
    return HfApi().create_commit(
        repo_id=repo_id, token=token, commit_message="Upload the model card",
        operations=[CommitOperationAdd(path_or_fileobj=str(model_dir / f), path_in_repo=f) for f in files],
    )
