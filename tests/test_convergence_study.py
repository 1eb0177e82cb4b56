"""The convergence study (studies/convergence.py) runs end to end: its --quick smoke version."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_study_trains_every_arm_and_writes_the_table_and_figures(tmp_path):
    """Every arm (A-D) from the pretrained parts (the default) and from scratch, one seed, a tiny budget: the runs
    finish, the table has a row per arm and init, the curves, the prior figures and the prior-vs-attention
    analysis are written. Numbers at this size mean nothing, so none are asserted."""
    out, figures = tmp_path / "out", tmp_path / "figures"
    proc = subprocess.run(
        [sys.executable, "studies/convergence.py", "--quick", "--inits", "pretrained", "scratch",
         "--out", str(out), "--figures", str(figures),
         "--runs", str(tmp_path / "runs"), f"data.synthetic.dir={tmp_path / 'clevr'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted((r["init"], r["arm"]) for r in records) == sorted(
        (init, arm) for init in ("pretrained", "scratch") for arm in "ABCD")
    for r in records:
        assert [p["step"] for p in r["curve"]] == [4, 8, 12]
        assert {"val", "test", "holdout"} <= r["final"].keys()
    table = (out / "table.md").read_text()
    assert all(f"| {init} | {arm}:" in table for init in ("pretrained", "scratch") for arm in "ABCD")
    assert (figures / "convergence.png").stat().st_size > 10_000
    assert [p.name for p in sorted(figures.glob("prior_words_*.png"))] == [f"prior_words_{i}.png" for i in range(3)]
    # where each arm's grounding token looks: the prior rows for the SMCA arms only, the attention for all
    analysis = (out / "prior_attention.md").read_text()
    for arm in "ABCD":
        assert f"| {arm} | Acc@0.5 |" in analysis and f"| {arm} | attention L2 |" in analysis
        assert (f"| {arm} | prior L1 |" in analysis) == (arm != "B")
    assert (figures / "prior_attention.png").stat().st_size > 10_000


def test_a_quick_run_never_writes_over_the_published_results(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    import convergence

    out, figures, runs = convergence.output_dirs(True, None, None, None)
    assert out.parent == Path(tempfile.gettempdir()) and figures == out / "figures" and runs == out / "runs"
    assert convergence.output_dirs(False, None, None, None) == (
        convergence.RESULTS, convergence.FIGURES, ROOT / "runs" / "convergence")
    for published in ({"out": convergence.RESULTS}, {"figures": convergence.FIGURES}):
        with pytest.raises(SystemExit, match="elsewhere than the published"):
            convergence.output_dirs(True, published.get("out"), published.get("figures"), None)
    out.rmdir()


def test_the_feature_cache_keeps_a_finished_run_s_key_and_other_overrides_change_it(monkeypatch):
    """model.feature_cache_gib changes a run's speed, not what it learns: finished runs stay finished."""
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    import convergence

    plain = convergence.run_overrides(convergence.ARMS["C"], "pretrained", 1, 1600, 100, [])
    cached = convergence.run_overrides(convergence.ARMS["C"], "pretrained", 1, 1600, 100, ["model.feature_cache_gib=4"])
    assert convergence.run_key(cached) == convergence.run_key(plain)
    assert convergence.run_key([*plain, "optim.lr=1e-4"]) != convergence.run_key(plain)
    assert convergence.run_key(convergence.run_overrides(convergence.ARMS["C"], "pretrained", 2, 1600, 100, [])) \
        != convergence.run_key(plain)
    # --stop-at ends a run early; its curve up to there is the full run's: the key stays
    stopped = convergence.run_overrides(convergence.ARMS["C"], "pretrained", 1, 1600, 100,
                                        [f'{convergence.STOP}{{"acc@0.5": 0.8}}'])
    assert convergence.run_key(stopped) == convergence.run_key(plain)


def test_the_supervised_arms_are_their_base_arm_plus_the_supervision(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    import convergence

    base = {"E": "C", "F": "B", "G": "C", "H": "C", "I": "C"}
    for arm, of in base.items():
        extra = set(convergence.ARMS[arm].overrides) - set(convergence.ARMS[of].overrides)
        assert set(convergence.ARMS[of].overrides) <= set(convergence.ARMS[arm].overrides)
        assert extra and all("supervis" in o for o in extra), (arm, extra)
    assert convergence.DEFAULT_ARMS == ("A", "B", "C", "D")  # the published study; E-H with --arms


def test_a_partial_rerun_reports_every_finished_run_of_the_config(monkeypatch, tmp_path):
    """``--seeds 2 --arms A`` trains one run but the table covers every arm and seed finished at this config
    (runs at another step budget stay out), and the prior analysis keeps the seed with the most arms' models."""
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    import convergence

    def record(arm: str, seed: int, steps: int, init: str = "pretrained") -> dict:
        overrides = convergence.run_overrides(convergence.ARMS[arm], init, seed, steps, 100, [])
        return {"key": convergence.run_key(overrides), "arm": arm, "init": init, "seed": seed}

    current = [record(arm, seed, 2400) for seed in (0, 1) for arm in "ABCD"] + [record("B", 2, 2400),
                                                                               record("A", 0, 2400, "scratch")]
    stale = [record("A", 0, 64), record("A", 3, 64)]
    assert convergence.this_config(stale + current, 2400, 100, []) == current
    assert convergence.this_config(current, 2400, 100, ["optim.lr=1e-4"]) == []

    for seed, arms in ((0, "ABCD"), (1, "ABCD"), (2, "ACD")):
        for arm in arms:
            (tmp_path / f"vqa+ground-pretrained-{arm}-s{seed}" / "final").mkdir(parents=True)
    models = convergence.kept_models(tmp_path, "vqa+ground", [2, 1, 0])
    assert models == {arm: tmp_path / f"vqa+ground-pretrained-{arm}-s0" / "final" for arm in "ABCD"}
    assert convergence.kept_models(tmp_path, "vqa+ground", [5]) == {}


def test_the_prior_analysis_of_another_seed_or_model_set_is_written_beside_the_published_one(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    import prior_attention

    results, figures = ROOT / "studies" / "results" / "convergence", ROOT / "studies" / "figures"
    assert prior_attention.output_paths(0, False) == (results / "prior_attention.md", figures / "prior_attention.png")
    assert prior_attention.output_paths(2, False) == (results / "prior_attention_s2.md",
                                                       figures / "prior_attention_s2.png")
    assert prior_attention.output_paths(0, True) == (results / "prior_attention_models.md",
                                                      figures / "prior_attention_models.png")


def test_a_run_stopped_by_a_signal_is_one_line_and_not_recorded(monkeypatch, tmp_path):
    """SIGTERM / SIGINT end a run early with a checkpoint; the study says so and records nothing (a part of a
    run would count as a finished one and be skipped by the next invocation)."""
    monkeypatch.syspath_prepend(str(ROOT / "studies"))
    import convergence

    from vlcoattn.train.trainer import TrainResult

    monkeypatch.setattr(convergence, "train", lambda job: TrainResult(Path(job.run.dir), step=983, interrupted=True))
    with pytest.raises(SystemExit, match="arm F seed 1 stopped by a signal at step 983; not recorded"):
        convergence.run_one(convergence.ARMS["F"], "pretrained", 1, "vqa+ground", [], "key", tmp_path, False)
