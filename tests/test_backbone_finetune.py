"""Partial backbone fine-tuning: ``vision_config.trainable_stages`` trains the last stages of a frozen timm
backbone; the split forward equals the whole one, gradients and norm statistics stay out of the frozen prefix,
the feature cache keeps the prefix's output, and the optimizer gives those stages ``optim.backbone_lr``."""

from __future__ import annotations

import json

import pytest
import torch

from vlcoattn.models import VLCoAttnConfig, VLCoAttnForGrounding
from vlcoattn.train.job_config import OptimConfig
from vlcoattn.train.optim import param_groups
from vlcoattn.vision import VisionBackbone, VisionConfig

from helpers import batch, tiny_config

# backbone, out_indices, trainable_stages -> the timm feature extractor's modules that must train
CASES = [
    ("tf_efficientnet_lite0", [-2], 1, ("blocks.3.", "blocks.4.")),
    ("tf_efficientnet_lite0", [-2], 2, ("blocks.2.", "blocks.3.", "blocks.4.")),
    ("resnet18", [-3, -1], 1, ("layer4.",)),
    ("convnext_atto", [-2], 2, ("stages_1.", "stages_2.")),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores


def _pair(name: str, out_indices: list[int], stages: int) -> tuple[VisionBackbone, VisionBackbone]:
    """A frozen backbone and the same weights with its last ``stages`` stages trainable."""
    torch.manual_seed(0)
    whole = VisionBackbone(VisionConfig(backbone=name, out_indices=out_indices, freeze=True))
    split = VisionBackbone(VisionConfig(backbone=name, out_indices=out_indices, freeze=True, trainable_stages=stages))
    split.load_state_dict(whole.state_dict())
    return whole, split


@pytest.mark.parametrize("name, out_indices, stages, trained", CASES)
def test_split_forward_equals_the_whole_backbone_and_only_the_last_stages_get_gradients(
        name, out_indices, stages, trained):
    whole, split = _pair(name, out_indices, stages)
    x = torch.randn(2, 3, 64, 96)
    want, got = whole.eval()(x), split.eval()(x)
    assert len(got) == len(out_indices) and all(torch.equal(a, b) for a, b in zip(want, got))
    prefix = split.forward_frozen(x)  # the prefix's levels, then its output
    assert all(torch.equal(a, b) for a, b in zip(split.forward_trainable(prefix), want))

    sum(f.square().mean() for f in split.train()(x)).backward()
    params = dict(split.model.named_parameters())
    assert {n for n, p in params.items() if p.requires_grad} == {n for n in params if n.startswith(trained)}
    assert {n for n, p in params.items() if p.grad is not None} == {n for n in params if n.startswith(trained)}
    assert all(any(params[n].grad.abs().sum() > 0 for n in params if n.startswith(stage)) for stage in trained)


def test_frozen_prefix_keeps_eval_mode_and_norm_statistics_while_the_last_stage_trains():
    _, bb = _pair("resnet18", [-1], 1)
    bb.train()
    assert not bb.model.bn1.training and not bb.model.layer3[0].bn1.training
    assert bb.model.layer4[0].bn1.training
    frozen_before = bb.model.layer3[0].bn1.running_mean.clone()
    trained_before = bb.model.layer4[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(bb.model.layer3[0].bn1.running_mean, frozen_before)
    assert not torch.equal(bb.model.layer4[0].bn1.running_mean, trained_before)
    bb.eval()
    assert not bb.model.layer4[0].bn1.training


def test_gradient_checkpointing_of_the_trainable_stages_gives_the_same_gradients():
    _, bb = _pair("convnext_atto", [-1], 2)
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        bb.set_grad_checkpointing(enable)
        bb.zero_grad()
        bb.train()(x)[-1].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("config, message", [
    (dict(backbone="resnet18", out_indices=[-1], freeze=True, trainable_stages=5),
     r"trainable_stages must be in \[0, 4\] for 'resnet18'"),
    (dict(backbone="resnet18", out_indices=[2], freeze=True, trainable_stages=3),
     r"trainable_stages must be in \[0, 2\] for 'resnet18'"),
    (dict(backbone="resnet18", freeze=True, trainable_stages=-1), r"trainable_stages must be >= 0"),
    (dict(backbone="resnet18", freeze=False, trainable_stages=1), r"trainable_stages needs freeze: true"),
    (dict(backbone="test_vit", out_indices=[1], freeze=True, trainable_stages=1),
     r"trainable_stages: backbone 'test_vit' .* cannot be split|not a chain of stages"),
])
def test_bad_trainable_stages_is_one_clear_value_error(config, message):
    with pytest.raises(ValueError, match=message):
        VisionBackbone(VisionConfig(**config))


def test_a_saved_config_without_the_option_loads_as_all_frozen(tmp_path):
    torch.manual_seed(0)
    model = VLCoAttnForGrounding(tiny_config(vision_config=dict(freeze=True))).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["vision_config"].pop("trainable_stages", None)  # a model dir written before the option existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = VLCoAttnForGrounding.from_pretrained(tmp_path).eval()
    assert loaded.config.vision_config.trainable_stages == 0
    assert loaded.vlcoattn.backbone.steps is None and loaded.vlcoattn.backbone.frozen
    ids, px = batch()
    torch.testing.assert_close(loaded(ids, px).pred_boxes, model(ids, px).pred_boxes, rtol=0, atol=0)
    again = VLCoAttnConfig.from_dict(tiny_config(vision_config=dict(freeze=True, trainable_stages=1)).to_dict())
    assert again.vision_config.trainable_stages == 1


def test_feature_cache_keeps_the_prefix_output_and_trains_like_recomputing():
    """test_resnet at level 2 with its last stage trainable: the cache holds that stage's input (level 1's
    map); gradients equal the uncached model's."""
    torch.manual_seed(0)
    config = tiny_config(vision_config=dict(freeze=True, trainable_stages=1))
    model = VLCoAttnForGrounding(config)
    ids, px = batch(B=3, H=64, W=64)
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.2]] * 3)
    grads = []
    for use_cache in (False, True):
        if use_cache:
            cache = model.vlcoattn.enable_feature_cache(max_gib=0.01)
            assert cache.parts == {"image"}
            model.eval()(ids, px)  # fill it
            (row,) = next(iter(cache.store.values()))
            level1 = model.vlcoattn.backbone.model.feature_info.info[1]
            assert row.shape == (level1["num_chs"], 64 // level1["reduction"], 64 // level1["reduction"])
        model.zero_grad()
        model.train()
        model(ids, px, boxes=boxes).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert cache.stats()["hits"] == 3 and cache.stats()["misses"] == 3
    assert any(".backbone.model.layer2." in n for n in grads[1])
    assert not any(".backbone.model.layer1." in n for n in grads[1])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_trainable_stages_get_backbone_lr_and_the_frozen_prefix_no_group():
    model = VLCoAttnForGrounding(tiny_config(vision_config=dict(freeze=True, trainable_stages=1)))
    groups = param_groups(model, OptimConfig(lr=1e-3, backbone_lr=1e-4))
    backbone = {id(p) for g in groups if g["name"].startswith("backbone") for p in g["params"]}
    assert all(g["lr"] == 1e-4 for g in groups if g["name"].startswith("backbone"))
    want = {id(p) for n, p in model.named_parameters() if ".backbone.model.layer2." in n}
    assert backbone == want and want
