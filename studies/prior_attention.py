"""Where the grounding token looks, per expression type: SMCA's prior and attention against plain attention.

    python studies/prior_attention.py                      # the study's seed-0 models in runs/convergence
    python studies/prior_attention.py --seed 1             # seed 1's: prior_attention_s1.{md,png}
    python studies/prior_attention.py --models A=runs/x/final B=runs/y/final --limit 600

For every grounding sample of the first ``--limit`` of val, each model's grounding token ([CLS]) is scored
per fusion layer by :func:`vlcoattn.eval.alignment.token_alignment`: the share of its head-mean attention
inside the target box ("mass"; a uniform map scores the box's share of the image, "chance"), whether
the attention's centroid (where the box head starts) lies in the box, and the same for its Gaussian
prior (SMCA arms). Written: ``prior_attention.md`` (means per arm and expression type, with Acc@0.5)
and ``prior_attention.png`` (examples per expression type: the last layer's prior and the first and last
layers' attention over the image, the true box green, the predicted one red). Seed 0's are the published
analysis (``convergence.py`` writes the same); another ``--seed`` writes ``prior_attention_s{N}.*`` and
``--models`` ``prior_attention_models.*`` beside them, so neither replaces it. The analysis itself:
:mod:`vlcoattn.eval.prior_attention`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlcoattn.eval.prior_attention import run

ROOT = Path(__file__).resolve().parents[1]


def output_paths(seed: int, custom_models: bool) -> tuple[Path, Path]:
    """(table, figure): the published ``prior_attention.*`` for the study's seed-0 models, else beside them
    under ``_s{seed}`` or ``_models``."""
    stem = "prior_attention" + ("_models" if custom_models else f"_s{seed}" if seed else "")
    return ROOT / "studies" / "results" / "convergence" / f"{stem}.md", ROOT / "studies" / "figures" / f"{stem}.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, metavar="ARM=DIR",
                        help="default: runs/convergence/vqa+ground-pretrained-{A,B,C,D}-s{SEED}/final, those that exist")
    parser.add_argument("--seed", type=int, default=0, help="with the default --models: the study's seed")
    parser.add_argument("--data", default="data/clevr-lite-4000/val")
    parser.add_argument("--limit", type=int, default=1000, help="the first N samples of --data (grounding ones are used)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the table (default studies/results/convergence/prior_attention[_sN|_models].md)")
    parser.add_argument("--figure", type=Path, default=None,
                        help="default studies/figures/prior_attention[_sN|_models].png")
    args = parser.parse_args()
    table_path, figure = output_paths(args.seed, bool(args.models))
    if args.models:
        models = dict(m.split("=", 1) for m in args.models)
    else:
        runs = ROOT / "runs" / "convergence"
        models = {a: runs / f"vqa+ground-pretrained-{a}-s{args.seed}" / "final" for a in "ABCD"}
    models = {a: Path(p) for a, p in models.items() if Path(p).is_dir()}
    if not models:
        raise SystemExit("prior_attention.py: no saved model to analyse (train the study first, or pass --models)")
    print(run(models, args.data, args.limit, args.out or table_path, args.figure or figure))


if __name__ == "__main__":
    main()
