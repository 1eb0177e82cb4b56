"""The installed commands: every tool is a ``vlcoattn-*`` entry point, and the entry point and
``tools/*.py`` run the same code."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "vlcoattn-train": "train", "vlcoattn-evaluate": "evaluate", "vlcoattn-infer": "infer",
    "vlcoattn-make-shards": "make_shards", "vlcoattn-convert-bert": "convert_bert",
    "vlcoattn-train-tokenizer": "train_tokenizer", "vlcoattn-probe-features": "probe_features",
    "vlcoattn-export": "export",
}


def test_every_tool_is_an_installed_entry_point():
    installed = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert {name: installed.get(name) for name in COMMANDS} == {
        name: f"vlcoattn.cli.{module}:cli" for name, module in COMMANDS.items()}
    assert sorted(p.stem for p in (ROOT / "tools").glob("*.py")) == sorted(COMMANDS.values())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_installed_command_runs(command):
    script = Path(sys.executable).parent / command  # where pip put it, beside this interpreter
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


def test_a_bad_argument_to_an_installed_command_is_one_line():
    proc = subprocess.run([str(Path(sys.executable).parent / "vlcoattn-train"), "--config", "no-such.yaml"],
                          capture_output=True, text=True, timeout=120)
    # the last line: an older dependency may print its own deprecation warning on import
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "vlcoattn-train: error: config file no-such.yaml does not exist"


def test_a_config_whose_base_is_missing_is_one_line(tmp_path):
    (tmp_path / "overlay.yaml").write_text("base: recipe.yaml\ntrain: {steps: 10}\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "vlcoattn-train"), "--config", "overlay.yaml"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "vlcoattn-train: error: config file overlay.yaml: its base 'recipe.yaml' (recipe.yaml) does not exist")


def test_make_shards_collects_the_sub_command_of_every_converter():
    """Each converter module adds its own sub-command with the function that runs it; the tool lists them."""
    from vlcoattn.cli.make_shards import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == ["jsonl", "vqa2", "refcoco", "flickr30k", "textcls", "text", "synthetic", "hf",
                                 "inspect"]
    for name, parser in sub.choices.items():
        assert callable(parser.get_default("run")), name
        if name != "inspect":  # every converter writes a shard directory
            assert {"--out", "--shard-size", "--overwrite", "--no-progress"} <= set(parser._option_string_actions)
