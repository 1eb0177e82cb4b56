"""Config inheritance (``base:``): the recipe is written once, the demo and the study are overlays of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vlcoattn.train.config import config_from_dict, load_config, merge_configs, read_config_file, save_config
from vlcoattn.train.job_config import JobConfig

ROOT = Path(__file__).resolve().parents[1]
BEFORE = Path(__file__).parent / "fixtures" / "recipes_before"  # the full files before they became overlays


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_demo_is_the_recipe_but_its_schedule_and_two_fusion_options():
    """The demo changes the recipe's schedule (run, train) and its fusion's image stream and supervision;
    everything else (data, encoders, heads, optimizer) is the recipe's."""
    demo, recipe = read_config_file(ROOT / "configs/demo.yaml"), read_config_file(ROOT / "configs/clevr.yaml")
    fusion, recipe_fusion = (c["model"]["config"].pop("coattention_config") for c in (demo, recipe))
    assert fusion == {**recipe_fusion, "keys_only_levels": [0], "attention_supervision_weight": 1.0}
    for key in ("run", "train"):
        demo.pop(key), recipe.pop(key)
    assert demo == recipe


@pytest.mark.parametrize("name", ["convergence"])
def test_overlays_resolve_to_the_full_files_they_replace(name):
    before, recipe_before = _yaml(BEFORE / f"{name}.yaml"), _yaml(BEFORE / "clevr.yaml")
    # the full file repeated the recipe's model config, which the overlay now inherits from clevr.yaml
    # (where its content lives, whatever form it takes)
    assert before["model"]["config"] == recipe_before["model"]["config"]
    expected = {**before, "model": {**before["model"], "config": _yaml(ROOT / "configs/clevr.yaml")["model"]["config"]}}

    overlay = _yaml(ROOT / f"configs/{name}.yaml")
    assert overlay["base"] == "clevr.yaml" and "model" not in overlay  # an overlay, not a copy
    assert read_config_file(ROOT / f"configs/{name}.yaml") == expected


def test_the_recipe_itself_is_unchanged_outside_its_model_config():
    recipe, before = _yaml(ROOT / "configs/clevr.yaml"), _yaml(BEFORE / "clevr.yaml")
    for data in (recipe, before):
        data["model"].pop("config")
    assert recipe == before


def test_the_config_saved_with_a_run_is_resolved(tmp_path):
    job = load_config(JobConfig, ROOT / "configs/demo.yaml", ["train.steps=3"])
    save_config(job, tmp_path / "config.yaml")
    saved = _yaml(tmp_path / "config.yaml")
    assert "base" not in saved
    assert saved["train"]["steps"] == 3 and saved["run"]["dir"] == "runs/demo" and saved["optim"]["lr"] == 3e-4
    assert config_from_dict(JobConfig, saved) == job


def test_merge_maps_key_by_key_and_replaces_lists_and_scalars():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}, "l": [1, 2, 3]}, "b": 1, "c": {"k": 1}}
    overlay = {"a": {"y": {"q": 3}, "l": [9]}, "b": {"now": "a map"}, "c": 5, "d": None}
    assert merge_configs(base, overlay) == {
        "a": {"x": 1, "y": {"p": 1, "q": 3}, "l": [9]}, "b": {"now": "a map"}, "c": 5, "d": None,
    }
    assert base == {"a": {"x": 1, "y": {"p": 1, "q": 2}, "l": [1, 2, 3]}, "b": 1, "c": {"k": 1}}  # untouched


def test_bases_chain_relative_to_each_file_then_overrides_apply(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text(
        "task: vqa\nrun: {dir: runs/root, seed: 1}\ndata: {synthetic: {dir: d}}\ntrain: {steps: 10, eval_every: 5}\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\ntrain: {steps: 20}\n")
    (tmp_path / "leaf.yaml").write_text("base: sub/mid.yaml\nrun: {dir: runs/leaf}\n")
    job = load_config(JobConfig, tmp_path / "leaf.yaml", ["train.eval_every=7"])
    assert (job.task, job.run.dir, job.run.seed) == ("vqa", "runs/leaf", 1)
    assert (job.train.steps, job.train.eval_every) == (20, 7)


def test_a_base_cycle_is_one_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: ./a.yaml\n")
    with pytest.raises(ValueError, match=r"base chain is a cycle \(.*a\.yaml -> .*b\.yaml -> .*a\.yaml\)"):
        load_config(JobConfig, tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(JobConfig, tmp_path / "self.yaml")


def test_a_bad_base_is_one_clear_error(tmp_path):
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"c\.yaml: its base 'missing\.yaml' \(.*missing\.yaml\) does not exist"):
        load_config(JobConfig, tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ValueError, match=r"'base' must name a YAML file"):
        load_config(JobConfig, tmp_path / "d.yaml")
    with pytest.raises(ValueError, match="unknown config key 'base'"):  # only a file names a base
        load_config(JobConfig, None, ["base=c.yaml"])
