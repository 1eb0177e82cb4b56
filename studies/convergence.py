"""Prove the prior: SMCA vs plain co-attention on CLEVR-lite VQA + grounding, several seeds.

    python studies/convergence.py                 # the study: arms A-D x 3 seeds at the CLEVR-lite recipe
    python studies/convergence.py --arms B C E F H --seeds 0   # with the supervised arms
    python studies/convergence.py --arms A B --seeds 0   # a part of it (finished runs are kept and skipped)
    python studies/convergence.py model.feature_cache_gib=4   # the frozen encoders run once per sample
    python studies/convergence.py --arms B C --stop-at 0.5   # each run ends at val Acc@0.5 0.5
    python studies/convergence.py --quick         # a ~2 minute smoke version (numbers mean nothing),
                                                     # written to a new temp dir, never over the results
    python studies/convergence.py --steps 600 data.batch_size=64 model.image_size=256   # a GPU size

Every run is ``vlcoattn.train.train`` on ``configs/convergence.yaml`` (same data, model size, step
budget, schedule and seed for every arm); only the fusion differs:

- A: ``spatial_prior: gaussian`` with ``prior_sharing: per_head`` (SMCA, per-head scales)
- B: ``spatial_prior: none`` (plain co-attention, the baseline)
- C: gaussian with head-shared scales (``prior_sharing: shared_scales``, the library's default)
- D: gaussian, per-head scales, multi-scale: stride 16 and 32 levels with per-token scale selection
- E-H: the phrases' boxes supervise where their tokens look (docs/models.md, "Prior supervision"): E = C with
  the prior supervised at layers >= 1, F = B with the attention-mass loss, G = C with the prior supervised
  at every layer, H = E with the grounding token supervised too, I = C with the attention-mass loss

from the pretrained parts (converted MiniLM, ImageNet EfficientNet-Lite0, both frozen: the recipe), and
with ``--inits scratch`` from scratch (both random and trained). Validation Acc@0.5 / mean IoU / VQA accuracy are logged every
``eval_every`` steps, test and hold-out at the end. Written to ``--out`` (default
``studies/results/convergence``): ``runs.jsonl`` (one line per finished run, keyed by a hash of the
config file and every override but the speed-only ``model.feature_cache_gib``; a rerun skips the runs it
already holds, a changed config reruns all),
``table.md``, ``prior_attention.md`` and figures under ``studies/figures/``: ``convergence.png`` (metric
vs step, mean and min-max over seeds), ``prior_words_*.png`` (what arm A's prior learned: each word's
Gaussian) and ``prior_attention.png``. The table and figures cover every finished run in runs.jsonl at
this configuration (steps, schedule, extra overrides), not only the arms and seeds this invocation
trained, so a partial rerun never shrinks them. An invocation keeps the final models of its first seed,
and ``prior_attention.py`` scores where their grounding token looks (prior and attention against the
true box, per expression type), for the seed with the most arms' models on disk (the earliest of equals).

Steps to target: for val Acc@0.5 0.5 and 0.8, each seed's first evaluated step at or above it (mean ±
std over the seeds that got there, their count, the samples it took), and the ratio of the mean to
plain co-attention's (B) when every seed of both arms got there. SMCA's claim is a ratio ≤ 1/3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import webdataset as wds

from vlcoattn.data import resolve_shards
from vlcoattn.eval import prior_attention
from vlcoattn.infer import Predictor, draw_prediction
from vlcoattn.train.config import load_config
from vlcoattn.train.job_config import JobConfig
from vlcoattn.train.metrics_log import read_metrics
from vlcoattn.train.trainer import train
from vlcoattn.utils.reporting import machine, markdown_table

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "convergence.yaml"
RESULTS = ROOT / "studies" / "results" / "convergence"
FIGURES = ROOT / "studies" / "figures"
METRICS = ("acc@0.5", "mean_iou", "vqa_acc")
ANALYSIS_LIMIT = 1000  # val samples (~400 boxes) the prior-vs-attention analysis scores
# settings that change how fast a run goes, not what it learns (the frozen-feature cache equals recomputing
# to float rounding): left out of a run's key, so adding one does not rerun finished runs
SPEED_ONLY = ("model.feature_cache_gib=",)
# --stop-at ends a run early; its curve up to the stop is the full run's, so it keeps the run's key too
STOP = "train.stop_when="


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    overrides: tuple[str, ...]


PRIOR = "model.config.coattention_config."  # the overrides of an arm's co-attention
C_OVERRIDES = (f"{PRIOR}spatial_prior=gaussian", f"{PRIOR}prior_sharing=shared_scales")
ARMS = {
    "A": Arm("A", "SMCA, per-head scales", (f"{PRIOR}spatial_prior=gaussian", f"{PRIOR}prior_sharing=per_head")),
    "B": Arm("B", "plain co-attention", (f"{PRIOR}spatial_prior=none",)),
    "C": Arm("C", "SMCA, head-shared scales", C_OVERRIDES),
    "D": Arm("D", "SMCA, multi-scale", (f"{PRIOR}spatial_prior=gaussian", f"{PRIOR}prior_sharing=per_head",
                                        "model.config.vision_config.out_indices=[-2,-1]")),
    # with the phrases' boxes supervising where their tokens look (docs/models.md, "Prior supervision")
    "E": Arm("E", "C + prior supervision, layers ≥ 1", (*C_OVERRIDES, f"{PRIOR}prior_supervision_weight=1.0",
                                                        f"{PRIOR}supervision_layers=[1]")),
    "F": Arm("F", "B + attention supervision", (f"{PRIOR}spatial_prior=none", f"{PRIOR}attention_supervision_weight=1.0")),
    "G": Arm("G", "C + prior supervision, every layer", (*C_OVERRIDES, f"{PRIOR}prior_supervision_weight=1.0")),
    "H": Arm("H", "E + the grounding token supervised", (*C_OVERRIDES, f"{PRIOR}prior_supervision_weight=1.0",
                                                         f"{PRIOR}supervision_layers=[1]",
                                                         f"{PRIOR}supervise_grounding_token=true")),
    "I": Arm("I", "C + attention supervision", (*C_OVERRIDES, f"{PRIOR}attention_supervision_weight=1.0")),
}
DEFAULT_ARMS = ("A", "B", "C", "D")  # the published study; the supervised arms E-H are trained with --arms
INITS = {
    "pretrained": (),
    "scratch": ("model.pretrained_text=false", "model.pretrained_backbone=false", "model.config.vision_config.freeze=false",
                "model.config.freeze_text_layers=0", "model.feature_cache_gib=0"),  # nothing frozen to cache
}
# --quick: a tiny data set and budget, only to prove the study runs end to end
QUICK = ("data.synthetic.dir=data/clevr-lite-quick", "data.synthetic.num_scenes=40", "data.batch_size=8",
         "data.eval_limit=24", "data.num_workers=0", "optim.warmup_steps=2")


def run_overrides(arm: Arm, init: str, seed: int, steps: int, eval_every: int, extra: list[str]) -> list[str]:
    """Everything one run sets on top of ``configs/convergence.yaml`` (but its output directory)."""
    return [*arm.overrides, *INITS[init], f"run.seed={seed}", f"train.steps={steps}",
            f"train.eval_every={eval_every}", *extra]


def run_key(overrides: list[str]) -> str:
    """What identifies a finished run in runs.jsonl: a hash of the config file and the overrides (but
    ``SPEED_ONLY`` ones)."""
    kept = [o for o in overrides if not o.startswith((*SPEED_ONLY, STOP))]
    return hashlib.sha256(json.dumps([CONFIG.read_text(), kept]).encode()).hexdigest()[:16]


def this_config(records: list[dict], steps: int, eval_every: int, extra: list[str]) -> list[dict]:
    """The finished runs the report covers: those of every init, arm and recorded seed at this configuration."""
    seeds = {r["seed"] for r in records}
    keys = {run_key(run_overrides(arm, init, seed, steps, eval_every, extra))
            for init in INITS for seed in seeds for arm in ARMS.values()}
    return [r for r in records if r.get("key") in keys]


def kept_models(runs_dir: Path, task: str, seeds: list[int]) -> dict[str, Path]:
    """Arm -> final model dir of the seed with the most arms' models on disk (the earliest of equals)."""
    kept = [{a: d for a in ARMS if (d := runs_dir / f"{task}-pretrained-{a}-s{seed}" / "final").is_dir()}
            for seed in sorted(seeds)]
    return max(kept, key=len, default={})


def run_one(arm: Arm, init: str, seed: int, task: str, overrides: list[str], key: str, runs_dir: Path,
            keep_model: bool) -> dict:
    """Train one arm; returns its record (under ``key``): val curves, final test / hold-out metrics, wall time."""
    run_dir = runs_dir / f"{task}-{init}-{arm.name}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    result = train(load_config(JobConfig, CONFIG, [*overrides, f"run.dir={run_dir}"]))
    seconds = time.perf_counter() - start
    if result.interrupted:  # a part of a run is not a record: the finished runs stay in runs.jsonl
        raise SystemExit(f"convergence.py: arm {arm.name} seed {seed} stopped by a signal at step {result.step}; "
                         "not recorded (a rerun trains it again and skips the finished runs)")
    logged = read_metrics(run_dir / "metrics.jsonl")
    val = [m for m in logged if m["split"] == "val"]
    train_rows = [m for m in logged if m["split"] == "train"]
    record = {
        "key": key, "arm": arm.name, "init": init, "seed": seed, "task": task, "overrides": overrides,
        "steps": result.step, "seconds": seconds,
        "samples_per_s": statistics.median(m["samples_per_s"] for m in train_rows),
        "curve": [{"step": m["step"], **{k: m[k] for k in METRICS if k in m}} for m in val],
        "final": result.metrics,
    }
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    if not keep_model:
        shutil.rmtree(run_dir / "final", ignore_errors=True)
    return record


def mean_curve(records: list[dict], metric: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, min, max) over the records' val curves (steps common to all)."""
    steps = sorted(set.intersection(*({p["step"] for p in r["curve"]} for r in records)))
    values = [[next(p[metric] for p in r["curve"] if p["step"] == s) for r in records] for s in steps]
    return steps, [statistics.fmean(v) for v in values], [min(v) for v in values], [max(v) for v in values]


TARGETS = (0.5, 0.8)  # val Acc@0.5 levels: how many steps each seed needs to reach them


def first_step(record: dict, metric: str, target: float) -> int | None:
    """First evaluated step where this run's val ``metric`` reaches ``target`` (None: never)."""
    return next((p["step"] for p in record["curve"] if p.get(metric, float("-inf")) >= target - 1e-9), None)


def spread(values: list[float], digits: int = 3) -> str:
    """'mean ± std' (std over seeds; 0 with one seed)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {sd:.{digits}f}"


def steps_cell(rs: list[dict], base: list[dict], target: float, batch: int) -> str:
    """Steps (and samples) to val Acc@0.5 >= target: mean ± std over the seeds that got there, how many
    did, and the ratio to plain co-attention's (B) mean when every seed of both got there."""
    steps = [first_step(r, "acc@0.5", target) for r in rs]
    hit = [s for s in steps if s is not None]
    if not hit:
        return "not reached"
    text = f"{spread(hit, 0)} ({statistics.fmean(hit) * batch / 1000:.0f}k samples; {len(hit)}/{len(rs)} seeds)"
    b_steps = [first_step(r, "acc@0.5", target) for r in base]
    if base and len(hit) == len(rs) and all(b is not None for b in b_steps):
        text += f", {statistics.fmean(hit) / statistics.fmean(b_steps):.2f}× B"
    return text


def table(records: list[dict], batch: int) -> str:
    """Final metrics per (init, arm) over seeds, and the steps each needs to reach val Acc@0.5 0.5 and 0.8."""
    columns = [("val", "acc@0.5"), ("test", "acc@0.5"), ("holdout", "acc@0.5"), ("val", "mean_iou"),
               ("test", "mean_iou")]
    if all("vqa_acc" in r["final"]["test"] for r in records):
        columns += [("val", "vqa_acc"), ("test", "vqa_acc")]
    rows = []
    for init in INITS:
        base = [r for r in records if r["init"] == init and r["arm"] == "B"]
        for arm in ARMS.values():
            rs = [r for r in records if r["init"] == init and r["arm"] == arm.name]
            if not rs:
                continue
            rows.append([
                init, f"{arm.name}: {arm.label}", len(rs),
                *(spread([r["final"][split][metric] for r in rs]) for split, metric in columns),
                *(steps_cell(rs, base, target, batch) for target in TARGETS),
                spread([r["steps"] for r in rs], 0),
                f"{statistics.fmean(r['samples_per_s'] for r in rs):.1f}",
            ])
    header = ["init", "arm", "seeds", *(f"{split} {metric}" for split, metric in columns),
              *(f"steps to val Acc@0.5 {t}" for t in TARGETS), "steps run", "samples/s"]
    return markdown_table(header, rows)


def plot(records: list[dict], out: Path) -> Path:
    """Validation Acc@0.5, mean IoU and VQA accuracy against the step: seed mean (line) and range (band)."""
    metrics = [m for m in METRICS if any(m in p for r in records for p in r["curve"])]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8), squeeze=False)
    colors = dict(zip(ARMS, ("tab:red", "tab:gray", "tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink")))
    for ax, metric in zip(axes[0], metrics):
        for init, style in zip(INITS, ("-", "--")):
            for arm in ARMS.values():
                rs = [r for r in records if r["init"] == init and r["arm"] == arm.name]
                if not rs or not any(metric in p for p in rs[0]["curve"]):
                    continue
                steps, mean, lo, hi = mean_curve(rs, metric)
                ax.plot(steps, mean, style, color=colors[arm.name], label=f"{arm.name} {init}", lw=1.6)
                ax.fill_between(steps, lo, hi, color=colors[arm.name], alpha=0.12)
        ax.set_title(f"val {metric}")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_priors(model_dir: Path, val_dir: Path, out_dir: Path, count: int = 3) -> list[Path]:
    """For the first ``count`` grounding samples of val: the prediction with each word's Gaussian."""
    predictor = Predictor.from_pretrained(model_dir)
    shards, _ = resolve_shards(val_dir)
    paths = []
    for sample in wds.WebDataset([s.url for s in shards], shardshuffle=False):
        record = json.loads(sample["json"])
        if record["task"] != "ground":
            continue
        image = next(v for k, v in sample.items() if k in ("png", "jpg", "jpeg", "webp"))
        prediction = predictor.predict(image, record["text"], task="ground")
        paths.append(draw_prediction(image, prediction, out_dir / f"prior_words_{len(paths)}.png"))
        if len(paths) == count:
            break
    return paths


def output_dirs(quick: bool, out: Path | None, figures: Path | None, runs: Path | None) -> tuple[Path, Path, Path]:
    """(results, figures, run dirs). The study publishes into studies/; a --quick smoke run writes into
    its own directory (default: a new temp dir) and is refused the published ones."""
    if not quick:
        return out or RESULTS, figures or FIGURES, runs or ROOT / "runs" / "convergence"
    out = out or Path(tempfile.mkdtemp(prefix="vlcoattn-convergence-quick-"))
    figures = figures or out / "figures"
    published = {RESULTS.resolve(), FIGURES.resolve()}
    if out.resolve() in published or figures.resolve() in published:
        raise SystemExit("convergence.py: --quick numbers mean nothing; write them elsewhere than the published "
                         f"results ({RESULTS.relative_to(ROOT)}, {FIGURES.relative_to(ROOT)})")
    return out, figures, runs or out / "runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke run (tiny data, 1 seed)")
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=list(ARMS),
                        help="the arms to train (default A-D; the report covers every finished run)")
    parser.add_argument("--inits", nargs="+", default=["pretrained"], choices=list(INITS),
                        help="default pretrained (the recipe); scratch: random text encoder and backbone, trained")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's (--quick: 12)")
    parser.add_argument("--eval-every", type=int, default=None, help="default: the config's (--quick: 4)")
    parser.add_argument("--stop-at", type=float, default=None,
                        help="end each run at its first val Acc@0.5 >= this (e.g. 0.8): the steps to it are "
                             "unchanged, the final metrics are then that step's (the table's 'steps run')")
    parser.add_argument("--report-only", action="store_true", help="train nothing: table and figures from runs.jsonl")
    parser.add_argument("--out", type=Path, default=None,
                        help="runs.jsonl + table.md (default studies/results/convergence; --quick: a new temp dir)")
    parser.add_argument("--figures", type=Path, default=None, help="default studies/figures (--quick: OUT/figures)")
    parser.add_argument("--runs", type=Path, default=None, help="run dirs (default runs/convergence; --quick: OUT/runs)")
    parser.add_argument("extra", nargs="*", help="more dotted overrides for every run (e.g. data.batch_size=16)")
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    extra = [*(QUICK if args.quick else ()), *args.extra]
    if args.stop_at is not None:
        extra.append(f'{STOP}{{"acc@0.5": {args.stop_at}}}')
    base = load_config(JobConfig, CONFIG, extra)
    steps = args.steps or (12 if args.quick else base.train.steps)
    eval_every = args.eval_every or (4 if args.quick else base.train.eval_every)
    args.out, args.figures, runs_dir = output_dirs(args.quick, args.out, args.figures, args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"writing to {args.out} (figures: {args.figures})", flush=True)
    log = args.out / "runs.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    for init in args.inits:  # init-major: the pretrained arms of every seed first
        for seed in seeds:
            for name in args.arms:
                overrides = run_overrides(ARMS[name], init, seed, steps, eval_every, extra)
                key = run_key(overrides)
                if args.report_only or any(r.get("key") == key for r in records):
                    continue  # finished in an earlier invocation
                keep = init == "pretrained" and seed == seeds[0]  # for the prior-vs-attention figures
                record = run_one(ARMS[name], init, seed, base.task, overrides, key, runs_dir, keep)
                records.append(record)
                with log.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                v = record["final"]["val"]
                print(f"{init:10s} {name} seed {seed}: val Acc@0.5 {v['acc@0.5']:.3f}  mIoU {v['mean_iou']:.3f}  "
                      f"({record['seconds']:.0f} s)", flush=True)
    records = this_config(records, steps, eval_every, extra)
    seeds = sorted({r["seed"] for r in records})
    batch = base.data.batch_size * base.optim.accum_steps
    text = f"Machine: {machine()}; task {base.task}, {steps} steps of {batch}, seeds {seeds}.\n\n{table(records, batch)}\n"
    (args.out / "table.md").write_text(text)
    print(text)
    print(f"figure: {plot(records, args.figures / 'convergence.png')}")
    val_dir = Path(base.data.synthetic.dir) / "val"
    models = kept_models(runs_dir, base.task, seeds)
    if "A" in models:
        for path in draw_priors(models["A"], val_dir, args.figures):
            print(f"figure: {path}")
    if models:  # where each arm's grounding token looks: its prior and attention against the true box
        limit = base.data.eval_limit if args.quick else ANALYSIS_LIMIT
        print(prior_attention.run(models, str(val_dir), limit, args.out / "prior_attention.md",
                                  args.figures / "prior_attention.png"))
    if args.out.resolve() == RESULTS.resolve():  # the published tables: the docs that include them follow
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "include_tables.py")], check=True)


if __name__ == "__main__":
    main()
