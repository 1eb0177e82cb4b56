"""benchmarks/fusion_cost.py: its settings are valid recipe configs, and its --quick run prints the table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vlcoattn.models import VLCoAttnConfig
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig

from helpers import text_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import fusion_cost  # noqa: E402


@pytest.mark.parametrize("name", list(fusion_cost.SETTINGS))
def test_every_setting_is_the_recipe_with_its_size_and_levels(name):
    """The overrides load into configs/clevr.yaml and give a model config that validates, with the named
    input size, levels and keys-only levels (stored from 0) and the rest of the recipe unchanged."""
    size, levels, keys_only = fusion_cost.SETTINGS[name]
    job = load_config(JobConfig, ROOT / "configs/clevr.yaml", fusion_cost.setting_overrides(name))
    config = VLCoAttnConfig(text_config=text_config(), **job.model.config)
    assert job.model.image_size == size and config.vision_config.out_indices == levels
    assert config.coattention_config.keys_only_levels == keys_only
    assert config.vision_config.freeze and config.freeze_text_layers == -1 and job.model.feature_cache_gib > 0


@pytest.mark.slow
def test_the_quick_run_prints_a_row_per_setting_with_ratios_to_the_recipe():
    """Two settings at batch 2, one step each, each in its own process (~35 s on 2 cores). The cell counts
    are the grids of a 128-px input at strides 16 and 8 + 16; numbers at this size mean nothing else."""
    proc = subprocess.run([sys.executable, "benchmarks/fusion_cost.py", "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.strip("|").split("|") for line in proc.stdout.splitlines() if line.startswith("| 128 px")]
    assert [r[0].strip() for r in rows] == fusion_cost.QUICK
    assert [r[1].strip() for r in rows] == [str((128 // 16) ** 2), f"{(128 // 8) ** 2} + {(128 // 16) ** 2}"]
    time_ratio, fusion_ratio = 4, 7  # the columns "time vs first" and "fusion vs first"
    assert rows[0][time_ratio].strip() == rows[0][fusion_ratio].strip() == "1.00"
    assert float(rows[1][fusion_ratio]) > 1  # the stride-8 cells are read, not free
