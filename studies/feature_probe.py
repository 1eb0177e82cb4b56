"""Can the frozen backbone see what CLEVR-lite asks about? A linear probe per feature level.

    python studies/feature_probe.py [--scenes 400] [--image 128]

For every object of ``--scenes`` generated train scenes, the backbone feature cell under the object's
center is taken at each stride (4, 8, 16, 32 for EfficientNet-Lite0 with its ImageNet weights, frozen,
as the demo uses it), and a logistic regression (70/30 split by object) predicts the object's colour,
shape and size from it. High accuracy at the fusion's level means the features carry the attributes,
so a model that fails to bind attribute words to regions fails in the fusion, not in the backbone.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression

from vlcoattn.data.write.synthetic import SyntheticConfig, synthetic_samples
from vlcoattn.utils.reporting import machine, markdown_table
from vlcoattn.vision import VisionBackbone, VisionConfig

ATTRIBUTES = ("color", "shape", "size")


def object_features(backbone: VisionBackbone, scenes: int, image: int) -> tuple[list[np.ndarray], list[tuple]]:
    """Per level (objects, C) features under each object's center, and the objects' attributes."""
    mean, std = backbone.data_config["mean"], backbone.data_config["std"]
    rows: list[list[np.ndarray]] = [[] for _ in backbone.strides]
    labels, seen = [], set()
    for _, data, _, record in synthetic_samples("train", scenes, 0, SyntheticConfig(image_size=image)):
        scene = record["meta"]["scene"]
        if scene in seen:  # one sample per scene: the objects are the scene's
            continue
        seen.add(scene)
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255
        x = torch.from_numpy((pixels - np.array(mean)) / np.array(std)).permute(2, 0, 1).float()[None]
        with torch.no_grad():
            feats = backbone(x)
        for obj in record["meta"]["objects"]:
            cx, cy = (obj["box"][0] + obj["box"][2]) / 2 / image, (obj["box"][1] + obj["box"][3]) / 2 / image
            for level, f in enumerate(feats):
                H, W = f.shape[-2:]
                rows[level].append(f[0, :, min(int(cy * H), H - 1), min(int(cx * W), W - 1)].numpy())
            labels.append(tuple(obj[a] for a in ATTRIBUTES))
    return [np.stack(r) for r in rows], labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--image", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = VisionConfig(backbone="tf_efficientnet_lite0", out_indices=[1, 2, 3, 4], freeze=True)
    backbone = VisionBackbone(config, pretrained=True).eval()
    features, labels = object_features(backbone, args.scenes, args.image)
    split = int(0.7 * len(labels))
    rows = []
    for level, X in enumerate(features):
        X = (X - X[:split].mean(0)) / (X[:split].std(0) + 1e-6)
        accs = []
        for a in range(len(ATTRIBUTES)):
            y = np.array([label[a] for label in labels])
            clf = LogisticRegression(max_iter=2000, C=0.5).fit(X[:split], y[:split])
            accs.append(f"{clf.score(X[split:], y[split:]):.3f}")
        H = args.image // backbone.strides[level]
        rows.append([f"{backbone.strides[level]} ({H}x{H})", *accs])
    print(f"Machine: {machine()}")
    print(f"{len(labels)} objects of {args.scenes} train scenes at {args.image} px; held-out accuracy of a "
          "linear probe on the cell under each object's center")
    print(markdown_table(["stride (grid)", *ATTRIBUTES], rows))


if __name__ == "__main__":
    main()
