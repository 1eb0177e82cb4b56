"""timm backbones as spatial feature extractors, their local weights and preprocessing."""

from .backbone import VisionBackbone, VisionConfig, check_backbone_name, image_transform
from .weights import (
    LOCAL_PRETRAINED,
    cache_dir,
    efficientnet_lite0_timm_file,
    local_pretrained_file,
    remap_state_dict_in_order,
)

__all__ = [
    "LOCAL_PRETRAINED",
    "VisionBackbone",
    "VisionConfig",
    "cache_dir",
    "check_backbone_name",
    "efficientnet_lite0_timm_file",
    "image_transform",
    "local_pretrained_file",
    "remap_state_dict_in_order",
]
