"""What can a backbone see? A linear probe of its frozen features under each object's box.

Before training, point it at shards (boxes, with labels or answers that name the objects), a backbone, input
sizes and levels: for each attribute it reports the train and held-out accuracy of a logistic regression
from the feature cells under each box, beside a chance baseline, and recommends the smallest input and
coarsest level that read the objects. ``vlcoattn-probe-features`` is its command line; docs/training.md
("What can my backbone see?") its guide.

Typical use::

    from vlcoattn.probe import build_backbone, collect_objects, probe_features, read_samples
    backbone, native = build_backbone("tf_efficientnet_lite0", strides=[8, 16])
    found = collect_objects(read_samples("data/clevr/train", 2000), ["meta.objects[].color"])
    report = probe_features(backbone, found, [(128, 128)])
    print(report.markdown())

Modules: :mod:`.objects` (label sources, reading shards), :mod:`.features` (backbone, letterbox, pooling),
:mod:`.linear` (the probe, the held-out split), :mod:`.report` (table, recommendation), :mod:`.run`.
"""

from .features import POOLS, box_features, build_backbone, level_indices, pool_boxes
from .linear import HELDOUT_FRACTION, ProbeScore, fit_probe, is_heldout
from .objects import AttributeSource, ProbeObjects, collect_objects, image_id, read_samples
from .report import TOLERANCE, ProbeReport, ProbeResult
from .run import attribute_features, probe_features

__all__ = [
    "HELDOUT_FRACTION",
    "POOLS",
    "TOLERANCE",
    "AttributeSource",
    "ProbeObjects",
    "ProbeReport",
    "ProbeResult",
    "ProbeScore",
    "attribute_features",
    "box_features",
    "build_backbone",
    "collect_objects",
    "fit_probe",
    "image_id",
    "is_heldout",
    "level_indices",
    "pool_boxes",
    "probe_features",
    "read_samples",
]
