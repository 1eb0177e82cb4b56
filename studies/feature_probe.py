"""Can the frozen backbone see what CLEVR-lite asks about? A linear probe per feature level.

    python studies/feature_probe.py [--scenes 400] [--image 128]

For every object of ``--scenes`` generated train scenes, the backbone feature cell under the object's
center is taken at each stride (4, 8, 16, 32 for EfficientNet-Lite0 with its ImageNet weights, frozen,
as the demo uses it), and a logistic regression (30% of the scenes held out, by image) predicts the object's
colour, shape and size from it. High accuracy at the fusion's level means the features carry the attributes,
so a model that fails to bind attribute words to regions fails in the fusion, not in the backbone.
The probe is :mod:`vlcoattn.probe`'s; ``vlcoattn-probe-features`` runs it on any shards.
"""

from __future__ import annotations

import argparse

import torch

from vlcoattn.data.write.synthetic import SyntheticConfig, synthetic_samples
from vlcoattn.probe import build_backbone, collect_objects, probe_features
from vlcoattn.utils.reporting import machine, markdown_table

ATTRIBUTES = ("color", "shape", "size")
STRIDES = (4, 8, 16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--image", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone, _ = build_backbone("tf_efficientnet_lite0", STRIDES)
    samples = synthetic_samples("train", args.scenes, 0, SyntheticConfig(image_size=args.image))
    sources = [f"meta.objects[].{a}" for a in ATTRIBUTES]  # every object of the scene, with its attributes
    found = collect_objects(((data, record) for _, data, _, record in samples), sources)
    report = probe_features(backbone, found, [(args.image, args.image)], pool="center", progress=False)
    probes = {(r.stride, r.attribute): r for r in report.results}
    rows = []
    for s in STRIDES:
        h, w = probes[s, sources[0]].grid
        rows.append([f"{s} ({h}x{w})", *(f"{probes[s, a].score.heldout:.3f}" for a in sources)])
    first = report.results[0].score
    print(f"Machine: {machine()}")
    print(f"{first.train_objects + first.heldout_objects} objects of {args.scenes} train scenes at {args.image} px "
          f"({first.heldout_objects} of them held out, by image); held-out accuracy of a linear probe on the "
          "cell under each object's center")
    print(markdown_table(["stride (grid)", *ATTRIBUTES], rows))


if __name__ == "__main__":
    main()
