"""VLCoAttn models: config, forward, masking, save/load, building from CooBERT + timm, heads, overfitting."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torchvision.ops import box_convert, box_iou
from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering, AutoTokenizer

import vlcoattn.fusion.smca as smca_module
from vlcoattn.assets import efficientnet_lite0_weights, minilm_dir, sample_photo
from vlcoattn.models import (
    VLCoAttnConfig,
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForQuestionAnswering,
    VLCoAttnModel,
    answer_loss,
    grounding_loss,
)
from vlcoattn.text import CooBertModel

from helpers import batch, text_config, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores


# ---------------------------------------------------------------------------------- forward


def test_forward_outputs_centers_heatmaps_on_non_square_images(monkeypatch):
    torch.manual_seed(0)
    cfg = tiny_config(vision_config=dict(out_indices=[1, 2]), coattention_config=dict(two_way=True))
    model = VLCoAttnModel(cfg).eval()
    ids, px = batch(H=64, W=96)
    out = model(ids, px, output_attentions=True)
    assert out.last_hidden_state.shape == (2, 6, 32) and out.pooler_output.shape == (2, 32)
    assert out.grid_sizes == ((16, 24), (8, 12))  # strides 4 and 8 of a 64 x 96 image
    assert [t.shape for t in out.image_hidden_states] == [(2, 384, 32), (2, 96, 32)]
    assert out.reference_centers.shape == (2, 6, 2)
    assert len(out.centers) == len(out.scales) == 2 and out.centers[0].shape == (2, 6, 4, 2)
    assert out.level_weights[0].shape == (2, 6, 2)
    assert model.level_scale_multipliers == [0.5, 1.0]  # stride / max stride
    assert out.cross_attentions[0][1].shape == (2, 4, 6, 96)
    heat = model.token_heatmaps(out)
    assert heat.shape == (2, 6, 8, 12)
    torch.testing.assert_close(heat.sum((-2, -1)), torch.ones(2, 6))
    # the SDPA path gives the same numbers as the explicit path used for the attention maps
    fast = model(ids, px)
    torch.testing.assert_close(fast.last_hidden_state, out.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert fast.cross_attentions is None
    # the path comes from the config, as in transformers: "eager" takes the explicit softmax (no maps asked)
    assert model.config._attn_implementation == "sdpa"
    calls = []
    reference = smca_module.attention_reference
    monkeypatch.setattr(smca_module, "attention_reference", lambda *a, **k: calls.append(1) or reference(*a, **k))
    model(ids, px)
    assert not calls
    model.set_attn_implementation("eager")
    torch.testing.assert_close(model(ids, px).last_hidden_state, fast.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert len(calls) == 2 * 2 + 1  # per layer: SMCA's 2 levels; the first layer's image -> text attention


@pytest.mark.parametrize("backbone, kwargs", [("test_vit", {}), ("test_convnext", {}), ("test_efficientnet", {})])
def test_other_backbone_families_train_end_to_end(backbone, kwargs):
    cfg = tiny_config(vision_config=dict(backbone=backbone, out_indices=[-1], model_kwargs=kwargs or None))
    model = VLCoAttnForGrounding(cfg)
    ids, px = batch(H=64, W=80)
    out = model(ids, px, boxes=torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.4, 0.2]]))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vlcoattn.backbone.parameters())


def test_padded_text_changes_no_real_output_and_batch_of_one_matches():
    torch.manual_seed(0)
    model = VLCoAttnForGrounding(tiny_config(coattention_config=dict(two_way=True))).eval()
    ids, px = batch(B=2, T=8)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0
    a = model(ids, px, attention_mask=mask)
    ids2 = ids.clone()
    ids2[0, 5:] = torch.tensor([7, 8, 9])  # different padding content
    b = model(ids2, px, attention_mask=mask)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes)
    torch.testing.assert_close(a.last_hidden_state[0, :5], b.last_hidden_state[0, :5])
    alone = model(ids[:1, :5], px[:1])
    torch.testing.assert_close(alone.pred_boxes, a.pred_boxes[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.last_hidden_state[0], a.last_hidden_state[0, :5], atol=1e-5, rtol=1e-5)


def test_backbone_keeps_timm_initialisation():
    """transformers' init pass must not touch the timm modules (ResNet zero-inits its last BN gammas)."""
    model = VLCoAttnModel(tiny_config(vision_config=dict(backbone="resnet18", out_indices=[-1])))
    bn = model.backbone.model.layer1[0].bn2
    assert torch.all(bn.weight == 0)
    prior = model.fusion.layers[0].cross_attn.prior
    assert torch.all(prior.scales.weight == 0) and torch.all(prior.scales.bias == 1)


# ------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize(
    "backbone, kwargs",
    [("test_resnet", None), ("test_vit_relpos", {"img_size": 64})],  # relpos: non-persistent buffers
)
def test_save_pretrained_from_pretrained_round_trip(tmp_path, backbone, kwargs):
    torch.manual_seed(0)
    vision = dict(backbone=backbone, out_indices=[-1], model_kwargs=kwargs)
    heads = dict(answer_vocab=["yes", "no", "red"])
    model = VLCoAttnForQuestionAnswering(tiny_config(vision_config=vision, heads_config=heads)).eval()
    ids, px = batch(H=64, W=64)
    want = model(ids, px).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "vlcoattn" and saved["text_config"]["model_type"] == "coobert"
    assert saved["heads_config"]["answer_vocab"] == ["yes", "no", "red"]
    assert saved["vision_config"]["backbone"] == backbone and saved["coattention_config"]["num_layers"] == 2
    loaded = VLCoAttnForQuestionAnswering.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids, px).logits, want)
    auto = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(auto(ids, px).logits, want)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VLCoAttnConfig)
    base = AutoModel.from_pretrained(tmp_path).eval()  # the base model out of a head checkpoint
    assert isinstance(base, VLCoAttnModel)
    torch.testing.assert_close(base(ids, px).last_hidden_state, model.vlcoattn(ids, px).last_hidden_state)


@pytest.mark.parametrize("vision", [dict(freeze=True), dict(freeze=True, out_indices=[1, 2], trainable_stages=1)])
def test_from_pretrained_freezes_what_the_config_freezes(tmp_path, vision):
    """transformers' loading materialises every parameter with requires_grad=True; a reloaded model must
    train (and cache) exactly what the freshly built one does, frozen parts in eval mode."""
    model = VLCoAttnForGrounding(tiny_config(text_config=text_config(num_hidden_layers=2), vision_config=vision,
                                             freeze_text_layers=1))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("vlcoattn.text_encoder.encoder.layer.1") for n in trainable)
    assert not any(n.startswith("vlcoattn.text_encoder.embeddings") for n in trainable)
    model.save_pretrained(tmp_path)
    loaded, info = VLCoAttnForGrounding.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values())
    assert {name for name, p in loaded.named_parameters() if p.requires_grad} == trainable
    loaded.train()
    frozen_modes = [m.training for m in loaded.vlcoattn.frozen_text]
    assert frozen_modes and not any(frozen_modes)


# what save_pretrained wrote before the config was grouped (vlcoattn 0.1.0): every field at the top level
FLAT_CONFIG = {
    "model_type": "vlcoattn", "architectures": ["VLCoAttnForMultitask"], "dtype": "float32",
    "transformers_version": "5.24.0", "id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2},
    "text_config": {**text_config().to_dict(), "transformers_version": None},
    "answer_vocab": ["a", "b", "c"], "backbone": "test_resnet", "backbone_channels_last": True,
    "backbone_kwargs": None, "backbone_out_indices": [1, 2], "box_giou_weight": 2.0, "box_l1_weight": 3.0,
    "center_from": "attention", "freeze_backbone": False, "freeze_text_layers": 1, "fusion_attention_dropout": 0.0,
    "fusion_dropout": 0.0, "fusion_hidden_size": 32, "fusion_intermediate_size": 128, "fusion_num_heads": 4,
    "fusion_num_layers": 2, "fusion_position_in_values": True, "fusion_shared_key_dim": 16,
    "grounding_token_index": 1, "hidden_act": "gelu", "image_size": None, "initializer_range": 0.02,
    "layer_norm_eps": 1e-12, "level_scale_multipliers": [0.5, 1.0], "prior_offset_mode": "logit",
    "prior_sharing": "per_head", "smca_beta": 6.0, "spatial_prior": "gaussian", "two_way": True,
    "vqa_loss": "ce", "vqa_pooling": "cls",
}
# the same model in the grouped form, written independently of the conversion
NESTED_CONFIG = dict(
    vision_config=dict(backbone="test_resnet", out_indices=[1, 2]), freeze_text_layers=1,
    coattention_config=dict(num_layers=2, shared_key_dim=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            two_way=True, beta=6.0, prior_sharing="per_head", level_scale_multipliers=[0.5, 1.0]),
    heads_config=dict(answer_vocab=["a", "b", "c"], answer_loss="ce", answer_pooling="cls", box_l1_weight=3.0,
                      grounding_token_index=1),
)


def _multitask_outputs(model: VLCoAttnForMultitask) -> dict[str, torch.Tensor]:
    ids, px = batch()
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])
    with torch.no_grad():
        out = model.eval()(ids, px, labels=torch.tensor([0, 2]), boxes=boxes)
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def test_a_flat_config_json_of_the_earlier_config_loads_as_the_same_model(tmp_path):
    """A model dir saved with the flat config loads through the conversion: the same config, and from the
    same seed the same weights and outputs as the model built from the grouped config."""
    torch.manual_seed(0)
    nested = VLCoAttnForMultitask(tiny_config(**NESTED_CONFIG))
    want = _multitask_outputs(nested)
    nested.save_pretrained(tmp_path)
    grouped = VLCoAttnConfig.from_pretrained(tmp_path).to_diff_dict()
    (tmp_path / "config.json").write_text(json.dumps(FLAT_CONFIG))
    assert VLCoAttnConfig.from_pretrained(tmp_path).to_diff_dict() == grouped
    loaded = VLCoAttnForMultitask.from_pretrained(tmp_path)
    got = _multitask_outputs(loaded)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    torch.manual_seed(0)
    fresh = VLCoAttnForMultitask(VLCoAttnConfig.from_dict(dict(FLAT_CONFIG)))  # built, not loaded
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), nested.state_dict().values()))
    got = _multitask_outputs(fresh)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VLCoAttnConfig)


def test_a_flat_config_without_the_changed_defaults_keeps_the_earlier_ones():
    flat = {k: v for k, v in FLAT_CONFIG.items() if k not in ("prior_sharing", "vqa_pooling", "two_way")}
    config = VLCoAttnConfig.from_dict(flat)
    assert config.coattention_config.prior_sharing == "per_head" and config.coattention_config.two_way is False
    assert config.heads_config.answer_pooling == "cls"
    assert VLCoAttnConfig().coattention_config.prior_sharing == "shared_scales"  # the grouped config's default


@pytest.mark.parametrize("key, value", [
    ("prior_offset_mode", "additive"), ("center_from", "text"), ("fusion_position_in_values", False),
    ("vqa_pooling", "cls+gated+centroids"), ("vqa_pooling", "cls+gated+tokens"),
])
def test_a_flat_config_with_a_removed_option_fails_with_one_line_naming_the_version(tmp_path, key, value):
    (tmp_path / "config.json").write_text(json.dumps({**FLAT_CONFIG, key: value}))
    pattern = re.escape(f"sets {key}={value!r}, ") + r".* vlcoattn 0\.1\.0 \(commit f7f4e4b\)"
    with pytest.raises(ValueError, match=pattern) as e:
        VLCoAttnForMultitask.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)


def test_build_from_a_coobert_dir_and_timm_weights(tmp_path):
    torch.manual_seed(0)
    text = CooBertModel(text_config())
    text.save_pretrained(tmp_path / "text")
    model = VLCoAttnForGrounding.from_text_and_backbone(
        tmp_path / "text", "tf_efficientnet_lite0", vision_config=dict(out_indices=[-2, -1]),
        coattention_config=dict(num_layers=1),
    )
    enc = model.vlcoattn.text_encoder
    torch.testing.assert_close(enc.embeddings.word_embeddings.weight, text.embeddings.word_embeddings.weight)
    q = enc.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(q, text.encoder.layer[0].attention.self.query.weight)
    src = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.vlcoattn.backbone.model.conv_stem.weight, src["_conv_stem.weight"])
    model.eval()
    ids, px = batch(H=96, W=128)
    want = model(ids, px).pred_boxes
    model.save_pretrained(tmp_path / "vl")
    again = VLCoAttnForGrounding.from_pretrained(tmp_path / "vl").eval()
    torch.testing.assert_close(again(ids, px).pred_boxes, want)
    torch.testing.assert_close(again.vlcoattn.backbone.model.conv_stem.weight, src["_conv_stem.weight"])


def test_from_text_and_backbone_fills_the_vision_config_and_refuses_a_clash():
    text = CooBertModel(text_config())
    model = VLCoAttnForGrounding.from_text_and_backbone(
        text, "test_resnet", image_size=[64, 96], pretrained_backbone=False, vision_config=dict(out_indices=[2]))
    vision = model.config.vision_config
    assert (vision.backbone, vision.image_size, vision.out_indices) == ("test_resnet", [64, 96], [2])
    with pytest.raises(ValueError, match=re.escape("backbone='test_resnet' and vision_config.backbone='resnet18' disagree")):
        VLCoAttnForGrounding.from_text_and_backbone(
            text, "test_resnet", pretrained_backbone=False, vision_config=dict(backbone="resnet18"))


def test_real_minilm_coobert_and_efficientnet_on_a_real_photo(tmp_path):
    """The full path: MiniLM -> CooBERT dir (exact conversion), EfficientNet-Lite0 weights, a real photo."""
    from PIL import Image

    from vlcoattn import VLCoAttnProcessor
    from vlcoattn.text.convert import convert_bert_dir

    convert_bert_dir(minilm_dir(), tmp_path / "coobert")
    model = VLCoAttnForQuestionAnswering.from_text_and_backbone(
        tmp_path / "coobert", "tf_efficientnet_lite0", coattention_config=dict(num_layers=1), heads_config=dict(answer_vocab=["yes", "no"]),
        image_size=[192, 256],
    ).eval()
    coattention = model.config.coattention_config
    assert coattention.hidden_size == 384 and coattention.num_attention_heads == 12  # the text's
    processor = VLCoAttnProcessor.for_model(model, AutoTokenizer.from_pretrained(tmp_path / "coobert"), max_text_len=32)
    image = Image.open(sample_photo("coffee"))  # 600 x 400: letterboxed into 256 x 192, 10 px bands above and below
    enc = processor(images=[image, image], text=["is there a cup of coffee?", "what is on the plate?"])
    assert enc["pixel_values"].shape == (2, 3, 192, 256) and enc["letterbox"][0, 2:4].tolist() == [0, 10]
    with torch.no_grad():
        out = model(enc["input_ids"], enc["pixel_values"], attention_mask=enc["attention_mask"])
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    assert out.reference_centers.shape == (2, enc["input_ids"].shape[1], 2)


# ------------------------------------------------------------------------------------- heads


def test_grounding_loss_matches_l1_and_giou_by_hand():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    tgt = torch.tensor([[0.6, 0.5, 0.2, 0.2]])
    total, l1, giou = grounding_loss(pred, tgt)
    assert l1.item() == pytest.approx(0.1, abs=1e-6)
    # xyxy: [0.4,0.4,0.6,0.6] vs [0.5,0.4,0.7,0.6]: inter 0.02, union 0.06, hull 0.06 -> GIoU = 1/3
    assert giou.item() == pytest.approx(1 - 1 / 3, abs=1e-5)
    assert total.item() == pytest.approx(5 * 0.1 + 2 * (2 / 3), abs=1e-5)
    zero, *_ = grounding_loss(tgt, tgt)
    assert zero.item() == pytest.approx(0.0, abs=1e-6)


def test_vqa_losses_bce_soft_scores_and_ce():
    torch.manual_seed(0)
    model = VLCoAttnForQuestionAnswering(tiny_config(heads_config=dict(answer_vocab=["a", "b", "c"])))
    logits = torch.randn(2, 3)
    soft = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.0, 0.6]])
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, soft, reduction="none").sum(1).mean()
    torch.testing.assert_close(model.vqa_loss(logits, soft), want)
    idx = torch.tensor([0, 2])
    torch.testing.assert_close(model.vqa_loss(logits, idx), model.vqa_loss(logits, torch.eye(3)[idx]))
    model.config.heads_config.answer_loss = "ce"
    torch.testing.assert_close(model.vqa_loss(logits, idx), torch.nn.functional.cross_entropy(logits, idx))
    assert model.predict_answers(torch.tensor([[0.0, 2.0, 1.0]])) == ["b"]


def test_grounding_box_starts_near_its_base_center_and_converts_to_pixels():
    torch.manual_seed(0)
    model = VLCoAttnForGrounding(tiny_config()).eval()
    ids, px = batch()
    out = model(ids, px)
    # base center c: where [CLS] attended in the last layer (head mean)
    c = out.attended_centers[-1][:, 0].mean(1)
    # center = sigmoid(logit(c) + Δ) with a small-init Δ; w = h = sigmoid(~0)
    torch.testing.assert_close(out.pred_boxes[:, :2], c, atol=0.02, rtol=0)
    torch.testing.assert_close(out.pred_boxes[:, 2:], torch.full((2, 2), 0.5), atol=0.02, rtol=0)
    raw = model.box_head.raw(out.last_hidden_state[:, 0])
    torch.testing.assert_close(out.pred_boxes[:, :2], torch.sigmoid(torch.logit(c) + raw[:, :2]))
    assert out.heatmaps.shape == (2, 6, 8, 12)
    pix = VLCoAttnForGrounding.boxes_to_pixels(torch.tensor([[0.5, 0.25, 0.5, 0.5]]), (100, 200))
    torch.testing.assert_close(pix, torch.tensor([[50.0, 0.0, 150.0, 50.0]]))


def test_gradients_reach_center_offset_and_scale_parameters_through_the_box_loss():
    torch.manual_seed(0)
    model = VLCoAttnForGrounding(tiny_config(vision_config=dict(out_indices=[1, 2])))
    ids, px = batch()
    out = model(ids, px, boxes=torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]]))
    out.loss.backward()
    layers = model.vlcoattn.fusion.layers
    for p in layers[0].reference_head.parameters():
        assert p.grad.abs().sum() > 0
    for layer in layers:
        prior = layer.cross_attn.prior
        for p in (prior.offsets.weight, prior.scales.weight, prior.scales.bias):
            assert p.grad.abs().sum() > 0


def test_spatial_prior_none_model_has_no_prior_and_boxes_from_where_it_attended():
    model = VLCoAttnForGrounding(tiny_config(coattention_config=dict(spatial_prior="none"))).eval()
    ids, px = batch()
    out = model(ids, px)
    assert out.reference_centers is None and out.heatmaps is None and out.centers is None
    raw = model.box_head.raw(out.last_hidden_state[:, 0])
    c = out.attended_centers[-1][:, 0].mean(1)  # plain cross-attention still looks somewhere
    torch.testing.assert_close(out.pred_boxes[:, :2], torch.sigmoid(torch.logit(c) + raw[:, :2]))
    # without a center at all the MLP regresses the box (logit(c) = 0)
    torch.testing.assert_close(model.box_head(out.last_hidden_state[:, 0], None), torch.sigmoid(raw))


# -------------------------------------------------------------------------------- bad config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vision_config=dict(backbone="resnet_does_not_exist")), "unknown backbone"),
        (dict(coattention_config=dict(beta=0.0)), "beta must be > 0"),
        (dict(coattention_config=dict(beta=-2)), "beta must be > 0"),
        (dict(coattention_config=dict(spatial_prior="box")), "spatial_prior must be one of"),
        (dict(coattention_config=dict(prior_sharing="all")), "prior_sharing must be one of"),
        (dict(coattention_config=dict(num_layers=0)), "num_layers must be > 0"),
        (dict(heads_config=dict(answer_loss="mse")), "answer_loss must be one of"),
        (dict(heads_config=dict(answer_pooling="mean")), "answer_pooling must be one of"),
        (dict(heads_config=dict(answer_vocab=["a", "a"])), "duplicate answers"),
        (dict(heads_config=dict(box_giou_weight=-1.0)), "box_giou_weight must be >= 0"),
        (dict(heads_config=dict(grounding_token_index=32)), "grounding_token_index must be in"),
        (dict(vision_config=dict(out_indices=[])), "at least one"),
        (dict(vision_config=dict(out_indices=[1, 1])), "duplicates"),
        (dict(coattention_config=dict(level_scale_multipliers=[1.0, 2.0])), "one per vision_config.out_indices level"),
        (dict(coattention_config=dict(level_scale_multipliers=[0.0])), "level_scale_multipliers must be numbers > 0"),
        (dict(coattention_config=dict(hidden_size=30, num_attention_heads=3)), "multiple of 4"),
        (dict(coattention_config=dict(hidden_size=36, num_attention_heads=8)), "one slice per head"),
        (dict(vision_config=dict(image_size=[64])), "image_size"),
        (dict(freeze_text_layers=2), "freeze_text_layers"),
        (dict(coattention_config=dict(num_layer=3)), "unknown option 'num_layer'; did you mean 'num_layers'"),
        (dict(fusion_num_layers=3), "'fusion_num_layers' is coattention_config.num_layers"),
        (dict(center_from="text"), "'center_from' was removed"),
    ],
)
def test_bad_config_is_a_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_out_of_range_out_indices_fail_at_build_with_a_clear_value_error():
    cfg = tiny_config(vision_config=dict(out_indices=[9]))
    with pytest.raises(ValueError, match=r"out_indices \(9,\) out of range for backbone 'test_resnet'"):
        VLCoAttnModel(cfg)


def test_question_answering_needs_an_answer_vocabulary():
    with pytest.raises(ValueError, match="answer_vocab"):
        VLCoAttnForQuestionAnswering(tiny_config())


# ------------------------------------------------------------------------------- overfitting


COLORS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0), "white": (1.0, 1.0, 1.0)}
COLOR_TOKEN = {name: 5 + i for i, name in enumerate(COLORS)}


def _disjoint(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def synthetic_scenes(n=8, size=64, colors_per_image=1, seed=0):
    """n images of non-overlapping colored rectangles on black.

    Returns images (n, 3, size, size), per image a dict color -> normalized (cx, cy, w, h) box.
    """
    g = torch.Generator().manual_seed(seed)
    images, scenes = torch.zeros(n, 3, size, size), []
    names = list(COLORS)
    for i in range(n):
        rects: dict[str, tuple[int, int, int, int]] = {}
        for k in range(colors_per_image):
            color = names[(i + k) % len(names)]
            while True:
                w, h = torch.randint(12, 32, (2,), generator=g).tolist()
                x0 = torch.randint(0, size - w + 1, (1,), generator=g).item()
                y0 = torch.randint(0, size - h + 1, (1,), generator=g).item()
                r = (x0, y0, x0 + w, y0 + h)
                if all(_disjoint(r, o) for o in rects.values()):
                    break
            rects[color] = r
            images[i, :, y0 : y0 + h, x0 : x0 + w] = torch.tensor(COLORS[color])[:, None, None]
        scenes.append({c: [(r[0] + r[2]) / 2 / size, (r[1] + r[3]) / 2 / size, (r[2] - r[0]) / size,
                           (r[3] - r[1]) / size] for c, r in rects.items()})
    return images, scenes


def test_tiny_grounding_model_overfits_8_images():
    """Two rectangles per image; the expression names the color, so the box depends on the text."""
    torch.manual_seed(0)
    images, scenes = synthetic_scenes(colors_per_image=2)
    targets = [list(scene)[i % 2] for i, scene in enumerate(scenes)]  # alternate first / second color
    ids = torch.tensor([[1, 3, COLOR_TOKEN[c], 4, 2] for c in targets])  # "[CLS] the <color> box [SEP]"
    boxes = torch.tensor([scene[c] for scene, c in zip(scenes, targets)])
    model = VLCoAttnForGrounding(tiny_config(text_config=text_config(64, shared_key_dim=64), coattention_config=dict(num_layers=1)))
    steps = 400
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(  # 20 warm-up steps, then cosine to 0
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    for _ in range(steps):
        model.train()
        loss = model(ids, images, boxes=boxes).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(ids, images).pred_boxes
    iou = box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(boxes, "cxcywh", "xyxy")).diag()
    assert iou.min() > 0.9, iou
    # the other rectangle of each image is NOT what it predicts: the text chose the box
    others = torch.tensor([next(v for c, v in scene.items() if c != t) for scene, t in zip(scenes, targets)])
    wrong = box_iou(box_convert(pred, "cxcywh", "xyxy"), box_convert(others, "cxcywh", "xyxy")).diag()
    assert wrong.max() < 0.1, wrong


def test_tiny_vqa_model_overfits_8_samples():
    torch.manual_seed(0)
    images, scenes = synthetic_scenes(seed=1)
    colors = [next(iter(scene)) for scene in scenes]
    boxes = torch.tensor([scene[c] for scene, c in zip(scenes, colors)])
    # two questions: "what color?" -> the color; "is it big?" -> yes/no by box area
    answers = ["red", "green", "blue", "white", "yes", "no"]
    ids, labels = [], []
    for i, c in enumerate(colors):
        if i % 2 == 0:
            ids.append([1, 10, 11, 2])  # [CLS] what color [SEP]
            labels.append(answers.index(c))
        else:
            ids.append([1, 12, 13, 2])  # [CLS] is big [SEP]
            labels.append(answers.index("yes" if boxes[i, 2] * boxes[i, 3] > 0.2 else "no"))
    ids, labels = torch.tensor(ids), torch.tensor(labels)
    heads = dict(answer_vocab=answers, answer_loss="ce")
    model = VLCoAttnForQuestionAnswering(tiny_config(coattention_config=dict(num_layers=1), heads_config=heads))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for _ in range(150):
        model.train()
        loss = model(ids, images, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(ids, images).logits
    assert model.predict_answers(logits) == [answers[i] for i in labels.tolist()]
    assert (logits.argmax(-1) == labels).float().mean().item() == 1.0


# ------------------------------------------------------------------------- multitask + losses


def test_multitask_model_every_parameter_gets_a_gradient_from_a_mixed_batch():
    """DDP needs it: no parameter may be left out of the graph (the last layer's image stream is not
    updated, and a batch without one of the tasks still touches that head)."""
    torch.manual_seed(0)
    model = VLCoAttnForMultitask(tiny_config(coattention_config=dict(two_way=True), heads_config=dict(answer_vocab=["yes", "no", "2"])))
    ids, px = batch()
    out = model(ids, px, labels=torch.tensor([[1.0, 0, 0], [0, 0, 0]]), answer_mask=torch.tensor([True, False]),
                boxes=torch.tensor([[0, 0, 0, 0], [0.6, 0.5, 0.2, 0.3]]), box_mask=torch.tensor([False, True]))
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert out.logits.shape == (2, 3) and out.pred_boxes.shape == (2, 4)
    torch.testing.assert_close(out.loss, out.loss_vqa + 5 * out.loss_l1 + 2 * out.loss_giou)


@pytest.mark.parametrize("targets", ["vqa", "ground"])
def test_a_batch_of_one_task_still_gives_every_head_a_gradient(targets):
    """A micro-batch with rows of one task only (one source per rank, or an unlucky mix): the other
    head gets a zero loss, so DDP still sees a gradient for every parameter, and the loss is unchanged."""
    torch.manual_seed(0)
    model = VLCoAttnForMultitask(tiny_config(heads_config=dict(answer_vocab=["yes", "no", "2"])))
    ids, px = batch()
    kw = dict(labels=torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])) if targets == "vqa" else \
        dict(boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.3]]))
    out = model(ids, px, **kw)
    out.loss.backward()
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    other = model.box_head if targets == "vqa" else model.vqa_head
    assert all(float(p.grad.abs().max()) == 0.0 for p in other.parameters())
    absent = out.loss_l1 if targets == "vqa" else out.loss_vqa
    assert float(absent) == 0.0


def test_freeze_text_layers_stops_gradients_and_dropout_in_the_frozen_part():
    config = tiny_config(text_config=text_config(num_hidden_layers=2, hidden_dropout_prob=0.5), freeze_text_layers=1)
    model = VLCoAttnModel(config).train()
    text = model.text_encoder
    frozen = [*text.embeddings.parameters(), *text.encoder.layer[0].parameters()]
    assert all(not p.requires_grad for p in frozen)
    assert all(p.requires_grad for p in text.encoder.layer[1].parameters())
    assert not text.embeddings.training and not text.encoder.layer[0].training and text.encoder.layer[1].training
    ids, px = batch()
    model(ids, px).last_hidden_state.sum().backward()
    assert all(p.grad is None for p in frozen) and all(p.grad is not None for p in text.encoder.layer[1].parameters())
    everything = VLCoAttnModel(tiny_config(text_config=text_config(num_hidden_layers=2), freeze_text_layers=-1))
    assert not any(p.requires_grad for p in everything.text_encoder.parameters())


def test_feature_cache_serves_frozen_outputs_equal_to_recomputing_and_trains_the_same():
    """Cached text rows (any padding) and images give the uncached model's outputs; duplicates are encoded
    once; a training step with the cache gives the same gradients; a model that trains both is refused."""
    torch.manual_seed(0)
    config = tiny_config(text_config=text_config(num_hidden_layers=2), freeze_text_layers=-1,
                         vision_config=dict(freeze=True), coattention_config=dict(two_way=True))
    model = VLCoAttnForGrounding(config).eval()
    ids, px = batch(B=4, T=8)
    px[3] = px[1]  # the same image twice
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[0, 5:] = 0
    reference = model(ids, px, attention_mask=mask)
    cache = model.vlcoattn.enable_feature_cache(max_gib=0.01)
    assert cache.parts == {"text", "image"}
    first = model(ids[:2, :5], px[:2], attention_mask=mask[:2, :5])  # row 0 shorter-padded, row 1 cut to 5
    assert cache.stats()["misses"] == 4  # 2 texts + 2 images
    cached = model(ids, px, attention_mask=mask)
    assert cache.stats()["misses"] == 4 + 3 + 1  # texts 1-3 (row 1 is longer now), image 2 (3 = 1)
    torch.testing.assert_close(cached.pred_boxes, reference.pred_boxes, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached.last_hidden_state[mask.bool()], reference.last_hidden_state[mask.bool()],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.pred_boxes[0], reference.pred_boxes[0], atol=1e-5, rtol=1e-5)
    again = model(ids, px, attention_mask=mask)
    assert cache.stats()["misses"] == 8  # all hits
    torch.testing.assert_close(again.pred_boxes, cached.pred_boxes)

    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.2]] * 4)
    grads = []
    for use_cache in (False, True):
        model.vlcoattn.disable_feature_cache()
        if use_cache:
            model.vlcoattn.enable_feature_cache()
            model(ids, px, attention_mask=mask)  # fill it
        model.zero_grad()
        model.train()
        torch.manual_seed(1)
        model(ids, px, attention_mask=mask, boxes=boxes).loss.backward()
        model.eval()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

    small = model.vlcoattn.enable_feature_cache(max_gib=1e-9)  # full at once: computes, stores nothing
    model(ids, px, attention_mask=mask)
    assert small.stats()["entries"] == 0 and small.stats()["misses"] == 7
    with pytest.raises(ValueError, match="frozen"):
        VLCoAttnModel(tiny_config()).enable_feature_cache()
    assert VLCoAttnModel(tiny_config(vision_config=dict(freeze=True))).enable_feature_cache().parts == {"image"}


def test_gated_image_pooling_counts_matching_cells_where_softmax_attention_averages():
    from vlcoattn.models.modeling_vlcoattn import GatedImagePooling

    torch.manual_seed(0)
    pool = GatedImagePooling(16, 2)
    query, match, other = torch.randn(1, 16), torch.randn(16), torch.randn(16)
    one = torch.stack([match] + [other] * 7)[None]  # (1, 8, 16): one matching cell
    three = torch.stack([match] * 3 + [other] * 5)[None]  # three of them
    counts = lambda image: pool(query, image)[0, 16:]  # noqa: E731
    gate = torch.sigmoid(pool.query(query).view(2, 8) @ pool.key(match).view(2, 8).T / 8**0.5).diagonal()
    other_gate = torch.sigmoid(pool.query(query).view(2, 8) @ pool.key(other).view(2, 8).T / 8**0.5).diagonal()
    torch.testing.assert_close(counts(three) - counts(one), torch.log1p(3 * gate + 5 * other_gate)
                               - torch.log1p(gate + 7 * other_gate))


@pytest.mark.parametrize("pooling", ["cls+gated", "cls"])
def test_answer_pooling_trains_every_parameter_and_reads_the_cls_and_the_gated_sum(pooling):
    torch.manual_seed(0)
    heads = dict(answer_vocab=["yes", "no", "2"], answer_pooling=pooling)
    model = VLCoAttnForQuestionAnswering(tiny_config(heads_config=heads))
    ids, px = batch()
    out = model(ids, px, labels=torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    out.loss.backward()
    assert out.logits.shape == (2, 3)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    base = model.vlcoattn(ids, px)
    features = model.answer_features(base)
    if pooling == "cls":
        assert model.image_pooling is None and torch.equal(features, base.pooler_output)
    else:  # [CLS] (d), the gated pool over every cell with its position (d), one count per head (N_h)
        image = base.image_hidden_states[0] + base.image_positions[0]
        want = torch.cat([base.pooler_output, model.image_pooling(base.pooler_output, image)], dim=-1)
        assert features.shape == (2, 32 + 32 + 4)
        torch.testing.assert_close(features, want)


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
def test_gradient_checkpointing_gives_the_same_gradients(backbone):
    """Text layers, fusion layers and the timm backbone recomputed in the backward pass: same loss, same
    gradients as without (dropout on: checkpointing replays the RNG)."""
    vision = {"test_vit": dict(out_indices=[-1], model_kwargs={"img_size": 64})}.get(backbone, {})
    config = tiny_config(vision_config=dict(backbone=backbone, **vision), coattention_config=dict(hidden_dropout_prob=0.1),
                         heads_config=dict(answer_vocab=["yes", "no"]))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = VLCoAttnForMultitask(config).train()
        if checkpointing:
            from vlcoattn.train.trainer import enable_gradient_checkpointing

            enable_gradient_checkpointing(model)
            timm_model = model.vlcoattn.backbone.model
            assert getattr(timm_model, "grad_checkpointing", None) or timm_model.model.grad_checkpointing
            assert all(layer.gradient_checkpointing for layer in model.vlcoattn.fusion.layers)
        ids, px = batch(H=64, W=64)
        torch.manual_seed(1)
        out = model(ids, px, labels=torch.tensor([[1.0, 0], [0, 1.0]]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2))
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_masked_losses_with_num_items_sum_to_the_full_batch_loss():
    """Splitting a batch into parts and dividing each part's sum by the whole count (what the trainer
    does across micro-batches and ranks) gives the loss of the whole batch."""
    torch.manual_seed(0)
    logits, scores = torch.randn(6, 4), torch.rand(6, 4)
    vqa_rows = torch.tensor([True, False, True, True, False, True])
    whole = answer_loss(logits, scores, "bce", vqa_rows)
    parts = sum(answer_loss(logits[i:i + 3], scores[i:i + 3], "bce", vqa_rows[i:i + 3], num_items=4) for i in (0, 3))
    torch.testing.assert_close(parts, whole)
    pred, tgt = torch.rand(6, 4) * 0.5 + 0.25, torch.rand(6, 4) * 0.5 + 0.25
    box_rows = ~vqa_rows
    whole_box = grounding_loss(pred, tgt, mask=box_rows)[0]
    parts_box = sum(grounding_loss(pred[i:i + 3], tgt[i:i + 3], mask=box_rows[i:i + 3], num_items=2)[0] for i in (0, 3))
    torch.testing.assert_close(parts_box, whole_box)
    # index labels: -100 rows are left out of the mean
    idx = torch.tensor([1, -100, 2, 0, -100, 3])
    torch.testing.assert_close(answer_loss(logits, idx, "ce"),
                               torch.nn.functional.cross_entropy(logits, idx, ignore_index=-100))
