"""Spatially modulated co-attention (SMCA) between text tokens and image feature grids."""

from .config import CoAttentionConfig, fusion_block_config
from .layers import (
    FeedForward,
    FusionLayerOutput,
    FusionOutput,
    SMCAFusionEncoder,
    SMCAFusionLayer,
)
from .position import PositionEmbeddingSine2D, sine_position_encoding_2d
from .smca import (
    PRIOR_SHARING,
    SPATIAL_PRIORS,
    CrossAttentionOutput,
    ReferenceCenterHead,
    SMCACrossAttention,
    SpatialPriorHead,
    attention_reference,
    gaussian_log_prior,
    grid_coordinates,
    merge_masks,
)
from .supervision import attention_mass_loss, box_cells, prior_supervision_loss, supervised_pairs

__all__ = [
    "PRIOR_SHARING",
    "SPATIAL_PRIORS",
    "CoAttentionConfig",
    "CrossAttentionOutput",
    "FeedForward",
    "FusionLayerOutput",
    "FusionOutput",
    "PositionEmbeddingSine2D",
    "ReferenceCenterHead",
    "SMCACrossAttention",
    "SMCAFusionEncoder",
    "SMCAFusionLayer",
    "SpatialPriorHead",
    "attention_mass_loss",
    "attention_reference",
    "box_cells",
    "fusion_block_config",
    "gaussian_log_prior",
    "grid_coordinates",
    "merge_masks",
    "prior_supervision_loss",
    "sine_position_encoding_2d",
    "supervised_pairs",
]
