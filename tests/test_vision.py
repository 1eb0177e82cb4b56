"""timm backbones: feature maps, channels/strides, real EfficientNet-Lite0 weights, freezing, errors."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from PIL import Image

from vlcoattn.assets import efficientnet_lite0_weights, sample_photo
from vlcoattn.vision import (
    VisionBackbone,
    VisionConfig,
    efficientnet_lite0_timm_file,
    image_transform,
    remap_state_dict_in_order,
)

ESPRESSO = 967  # ImageNet-1k class index


def _backbone(name: str, pretrained: bool = False, pretrained_file=None, **config) -> VisionBackbone:
    """VisionBackbone of ``VisionConfig(backbone=name, **config)``."""
    return VisionBackbone(VisionConfig(backbone=name, **config), pretrained=pretrained, pretrained_file=pretrained_file)


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    """The package's EfficientNet-Lite0 .pth converted to a timm safetensors file (fresh cache dir)."""
    return efficientnet_lite0_timm_file(cache=tmp_path_factory.mktemp("vlcoattn-cache"))


# ------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {}),
        ("convnext_atto", {}),
        ("vit_tiny_patch16_224", {"img_size": 64}),
    ],
)
def test_backbones_give_feature_grids_matching_feature_info(name, kwargs):
    torch.manual_seed(0)
    bb = _backbone(name, out_indices=[-2, -1], model_kwargs=kwargs).eval()
    x = torch.randn(2, 3, 96, 160)  # non-square
    with torch.no_grad():
        feats = bb(x)
    assert len(feats) == len(bb.channels) == len(bb.strides) == 2
    for f, c, s in zip(feats, bb.channels, bb.strides):
        assert f.shape[:2] == (2, c)
        assert f.shape[2:] == (math.ceil(96 / s), math.ceil(160 / s))
        assert torch.isfinite(f).all()


def test_vit_any_input_size_via_forward_intermediates_grid():
    """A ViT's tokens come back as a (B, C, H/p, W/p) grid for sizes that are not patch multiples."""
    bb = _backbone("vit_tiny_patch16_224", out_indices=[-1], model_kwargs={"img_size": 64}).eval()
    assert bb.strides == [16] and bb.channels == [192]
    with torch.no_grad():
        (f,) = bb(torch.randn(1, 3, 70, 100))
    assert f.shape == (1, 192, 5, 7)  # padded up to 80 x 112 -> 5 x 7 patches


def test_efficientnet_lite0_real_weights_classify_coffee_as_espresso(lite0_file):
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay=dict(file=str(lite0_file)))
    model.eval()
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    image = Image.open(sample_photo("coffee")).convert("RGB")
    x = timm.data.create_transform(**cfg)(image)[None]
    with torch.no_grad():
        logits = model(x)
    assert logits.argmax(-1).item() == ESPRESSO
    assert logits.softmax(-1)[0, ESPRESSO] > 0.5

    # the same weights through OUR loader (features_only backbone) + the classifier head
    bb = _backbone("tf_efficientnet_lite0", out_indices=[-1], pretrained=True, pretrained_file=lite0_file).eval()
    crop = bb.transform(crop=True)  # timm's eval transform from the backbone's data config
    with torch.no_grad():
        (f,) = bb(crop(image)[None])  # (1, 320, 7, 7)
        logits2 = model.forward_head(model.bn2(model.conv_head(f)))  # bn2 = BN + ReLU6 in timm
    torch.testing.assert_close(logits2, logits, atol=1e-4, rtol=1e-4)


def test_pretrained_without_file_uses_the_local_efficientnet_weights(lite0_file, monkeypatch):
    monkeypatch.setenv("VLCOATTN_CACHE", str(lite0_file.parent))
    bb = _backbone("tf_efficientnet_lite0", pretrained=True)
    src = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(bb.model.conv_stem.weight, src["_conv_stem.weight"])
    torch.testing.assert_close(bb.model.blocks[6][0].conv_pwl.weight, src["_blocks.15._project_conv.weight"])


def test_weight_conversion_is_cached(lite0_file):
    mtime = lite0_file.stat().st_mtime_ns
    again = efficientnet_lite0_timm_file(cache=lite0_file.parent)
    assert again == lite0_file and again.stat().st_mtime_ns == mtime


def test_in_order_remap_rejects_shape_or_count_mismatch():
    target = {"a.weight": torch.zeros(3, 2), "a.bias": torch.zeros(3)}
    ok = remap_state_dict_in_order({"x": torch.ones(3, 2), "y": torch.ones(3)}, target)
    assert list(ok) == ["a.weight", "a.bias"] and ok["a.bias"].sum() == 3
    with pytest.raises(ValueError, match=r"tensor #1 'y' has shape \(4,\)"):
        remap_state_dict_in_order({"x": torch.ones(3, 2), "y": torch.ones(4)}, target)
    with pytest.raises(ValueError, match="1 tensors, but the timm model has 2"):
        remap_state_dict_in_order({"x": torch.ones(3, 2)}, target)


# ------------------------------------------------------------------------------- preprocessing


def test_transform_keeps_the_whole_image_at_any_size():
    bb = _backbone("tf_efficientnet_lite0", out_indices=[-1])
    t = bb.transform((96, 160))
    x = t(Image.new("RGB", (50, 200), (255, 0, 0)))
    assert x.shape == (3, 96, 160)
    torch.testing.assert_close(x[:, 10, 10], torch.tensor([1.0, -1.0, -1.0]))  # mean/std 0.5 from timm
    with pytest.raises(ValueError, match="image_size"):
        image_transform(bb.data_config, image_size=(0, 3))


# ------------------------------------------------------------------------------------ freezing


def test_freeze_stops_gradients_and_norm_statistics():
    bb = _backbone("resnet18", out_indices=[-1], freeze=True).train()
    assert not any(p.requires_grad for p in bb.parameters())
    assert not bb.model.bn1.training  # norms stay in eval mode while the rest trains
    before = bb.model.bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bb.model.bn1.running_mean)
    bb.unfreeze()
    assert all(p.requires_grad for p in bb.parameters()) and bb.model.bn1.training


def test_non_persistent_buffers_are_rebuilt():
    bb = _backbone("test_vit_relpos", out_indices=[-1])
    key = "model.blocks.0.attn.rel_pos.relative_position_index"
    good = dict(bb.model.named_buffers())[key].clone()
    bb.model.model.blocks[0].attn.rel_pos.relative_position_index.zero_()
    bb.reset_non_persistent_buffers()
    assert torch.equal(dict(bb.model.named_buffers())[key], good) and good.abs().sum() > 0


# ---------------------------------------------------------------------------------- bad config


def test_unknown_backbone_name_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet181'.*did you mean.*resnet18"):
        VisionConfig(backbone="resnet181")


@pytest.mark.parametrize("name, indices", [("resnet18", [7]), ("resnet18", [-9]), ("test_vit", [40])])
def test_out_indices_out_of_range_is_a_clear_value_error(name, indices):
    with pytest.raises(ValueError, match=r"out_indices .* out of range for backbone"):
        _backbone(name, out_indices=indices)


def test_duplicate_or_empty_out_indices_rejected():
    with pytest.raises(ValueError, match="twice"):  # two names of one level: only the built model knows
        _backbone("resnet18", out_indices=[4, -1])
    with pytest.raises(ValueError, match="duplicates"):
        VisionConfig(out_indices=[1, 1])
    with pytest.raises(ValueError, match="at least one"):
        VisionConfig(out_indices=[])
    with pytest.raises(ValueError, match=r"unknown option 'out_indice'; did you mean 'out_indices'"):
        VisionConfig(out_indice=[1])


def test_missing_weights_file_is_reported():
    with pytest.raises(FileNotFoundError, match="not found"):
        _backbone("resnet18", pretrained_file="/nonexistent/weights.safetensors")


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "test_vit"])
def test_channels_last_gives_the_same_features_and_gradients(name):
    """NHWC images are a layout change only: same features and parameter gradients, parameters and
    their gradients stay contiguous (what safetensors and DDP's gradient buckets need)."""
    torch.manual_seed(0)
    nchw = _backbone(name, out_indices=[-1], channels_last=False).eval()  # eval: batch-2 BN stats amplify rounding
    nhwc = _backbone(name, out_indices=[-1], channels_last=True).eval()
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m in (nchw, nhwc):
        feats = m(x)
        feats[0].square().mean().backward()
        outs.append((feats[0].detach(), {k: p.grad for k, p in m.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-4, atol=1e-5)
    for k, g in outs[0][1].items():
        torch.testing.assert_close(outs[1][1][k], g, rtol=1e-3, atol=1e-5)
        assert outs[1][1][k].is_contiguous()
    assert all(p.is_contiguous() for p in nhwc.parameters())
