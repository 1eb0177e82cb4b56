"""The vision-language models against what transformers' common model tests check for every in-tree model
(save / load, outputs and their shapes, attention paths, padding, batching, embeddings, compilation), and
the pipelines against the call shapes of transformers' own VQA pipeline; tiny configs, every VL class
where the convention applies."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedModel

from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.models import (
    VLCoAttnConfig,
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForPhraseGrounding,
    VLCoAttnForPhraseMultitask,
    VLCoAttnForQuestionAnswering,
    VLCoAttnModel,
    VLCoAttnModelOutput,
    VLCoAttnProcessor,
)
from vlcoattn.text import collaborative_attention_reference

from helpers import VOCAB, text_config, tiny_config

CLASSES = [VLCoAttnModel, VLCoAttnForQuestionAnswering, VLCoAttnForGrounding, VLCoAttnForMultitask]
IDS = [c.__name__ for c in CLASSES]
HEADS = CLASSES[1:]
# with the phrase models, which take phrase_tokens besides (see phrases()): the checks where they apply
WITH_PHRASE = [*CLASSES, VLCoAttnForPhraseGrounding, VLCoAttnForPhraseMultitask]
PHRASE_IDS = [c.__name__ for c in WITH_PHRASE]
ANSWERS = ["yes", "no", "red", "two"]
D, N_H, LAYERS, TEXT_LAYERS = 32, 4, 2, 1
IMAGE = (32, 48)  # strides 4 and 8 of test_resnet: grids 8 x 12 and 4 x 6
GRIDS = ((8, 12), (4, 6))
BETA = 8.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores


def config(dropout: float = 0.0, **kw) -> VLCoAttnConfig:
    """Two image levels (multi-scale SMCA: per-level maps and the scale selection), two-way fusion; ``dropout``
    in the text encoder and the fusion."""
    p = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return tiny_config(text_config=text_config(**p), vision_config=dict(out_indices=[1, 2]),
                       coattention_config=dict(two_way=True, **p), heads_config=dict(answer_vocab=ANSWERS), **kw)


def build(cls, seed: int = 0, dropout: float = 0.0, **kw) -> PreTrainedModel:
    """A model in eval mode whose zero-initialised parts (SMCA scale weights, collaborative mixing) are random,
    so no symmetric initialisation lets a comparison pass by accident."""
    torch.manual_seed(seed)
    model = cls(config(dropout, **kw))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("prior.scales.weight") or "mixing" in name or "content_bias" in name:
                p.normal_(0, 0.2)
    return model.eval()


def inputs(batch: int = 3, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[CLS] + random ids, right-padded (id 0) to rows of lengths 7, 4, 2; and random images."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, max(length - 3 * row, 2):] = 0
    return ids.masked_fill(mask == 0, 0), mask, torch.randn(batch, 3, *IMAGE, generator=g)


def phrases(model, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The phrase models' extra input (nothing for the others): two phrases per row, placed by the row's real
    tokens so that they move with left padding and slice with the row: every real token after the first, and
    the second real token alone."""
    if "phrase_tokens" not in getattr(model, "extra_inputs", ()):
        return {}
    real = mask.bool()
    rank = real.cumsum(-1)
    return {"phrase_tokens": torch.stack([real & (rank > 1), real & (rank == 2)], dim=1)}


def main_outputs(out) -> dict[str, torch.Tensor]:
    """What each class is for: fused text tokens (encoder), answer logits and / or boxes (heads)."""
    if isinstance(out, VLCoAttnModelOutput):
        return {"last_hidden_state": out.last_hidden_state}
    names = ("logits", "pred_boxes", "pred_phrase_boxes")
    return {n: getattr(out, n) for n in names if getattr(out, n, None) is not None}


def assert_main_outputs_equal(a, b, atol: float = 1e-5) -> None:
    a, b = main_outputs(a), main_outputs(b)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=atol, msg=name)


# -- constructors, arguments, tuples -------------------------------------------------------------------------


def test_constructors_leave_the_callers_config_alone():
    c = config()
    before = c.to_dict()
    models = [cls(c) for cls in CLASSES]
    assert c.to_dict() == before
    assert all(m.config is c for m in models) and models[1].vlcoattn.config is c


@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_unknown_forward_arguments_are_refused_with_one_line(cls):
    ids, mask, px = inputs()
    with pytest.raises(ValueError, match=r"forward got unexpected argument\(s\) \['use_cache'\]"):
        build(cls)(ids, px, attention_mask=mask, use_cache=False)


@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_return_dict_false_gives_the_tuple_from_the_call_or_the_config(cls):
    model = build(cls)
    ids, mask, px = inputs()
    extra = phrases(model, mask)
    expected = model(ids, px, attention_mask=mask, **extra).to_tuple()
    for got in (model(ids, px, attention_mask=mask, return_dict=False, **extra),
                build(cls, return_dict=False)(ids, px, attention_mask=mask, **extra)):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for x, y in zip(got, expected):
            if isinstance(x, torch.Tensor):
                torch.testing.assert_close(x, y, rtol=0, atol=0)
    first = {VLCoAttnModel: "last_hidden_state", VLCoAttnForGrounding: "pred_boxes",
             VLCoAttnForPhraseGrounding: "pred_boxes"}.get(cls, "logits")
    torch.testing.assert_close(expected[0], getattr(model(ids, px, attention_mask=mask, **extra), first))


# -- save / load ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_bin"])
@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_save_load_round_trip(tmp_path, cls, safetensors):
    """transformers 5 always writes safetensors (``save_pretrained`` has no ``safe_serialization``); the
    checkpoint without safetensors is a ``pytorch_model.bin`` of the whole state dict, which
    ``from_pretrained`` still reads. No weights are tied: the file holds every key."""
    model = build(cls)
    state = model.state_dict()
    if safetensors:
        model.save_pretrained(tmp_path)
        assert load_file(tmp_path / "model.safetensors").keys() == state.keys()
    else:
        model.config.save_pretrained(tmp_path)
        torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = cls.from_pretrained(tmp_path).eval()
    reloaded = loaded.state_dict()
    assert reloaded.keys() == state.keys()
    for name in state:
        torch.testing.assert_close(reloaded[name], state[name], rtol=0, atol=0, msg=name)
    ids, mask, px = inputs()
    extra = phrases(model, mask)
    assert_main_outputs_equal(loaded(ids, px, attention_mask=mask, **extra), model(ids, px, attention_mask=mask, **extra),
                              atol=0)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_no_tied_weights(cls):
    """No output embeddings to tie: every parameter is its own tensor."""
    model = build(cls)
    assert model.get_output_embeddings() is None
    storages = [p.data_ptr() for p in model.parameters()]
    assert len(storages) == len(set(storages)) == len(dict(model.named_parameters()))


# -- forward conventions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_eval_is_deterministic_and_train_is_not(cls):
    model = build(cls, dropout=0.3)
    ids, mask, px = inputs()
    first = model(ids, px, attention_mask=mask, **phrases(model, mask))
    assert_main_outputs_equal(model(ids, px, attention_mask=mask, **phrases(model, mask)), first, atol=0)
    model.train()
    trained = main_outputs(model(ids, px, attention_mask=mask, **phrases(model, mask)))
    assert any(not torch.allclose(trained[n], v) for n, v in main_outputs(first).items())


@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_a_padded_batch_equals_its_rows_one_at_a_time(cls):
    model = build(cls)
    ids, mask, px = inputs()
    batched = main_outputs(model(ids, px, attention_mask=mask, **phrases(model, mask)))
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = main_outputs(model(ids[row:row + 1, :n], px[row:row + 1], **phrases(model, mask[row:row + 1, :n])))
        for name, value in alone.items():
            got = batched[name][row:row + 1, :n] if name == "last_hidden_state" else batched[name][row:row + 1]
            torch.testing.assert_close(got, value, atol=1e-5, rtol=1e-5, msg=name)


def left_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding moved to the left."""
    ids, mask = ids.clone(), mask.clone()
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        ids[row] = torch.cat([ids[row, n:], ids[row, :n]])
        mask[row] = torch.cat([mask[row, n:], mask[row, :n]])
    return ids, mask


@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_left_padding_equals_right_padding_at_the_real_tokens(cls):
    """Text positions count real tokens and the [CLS] / grounding token is each row's first real one, so
    a tokenizer padding on the left gives the same answers, boxes, tokens, centers and heatmaps."""
    model = build(cls)
    ids, mask, px = inputs()
    lids, lmask = left_padded(ids, mask)
    assert not torch.equal(lids, ids)
    right = model(ids, px, attention_mask=mask, **phrases(model, mask))
    left = model(lids, px, attention_mask=lmask, **phrases(model, lmask))
    for name in ("logits", "pred_boxes", "pooler_output"):
        if getattr(right, name, None) is not None:
            torch.testing.assert_close(getattr(left, name), getattr(right, name), atol=1e-5, rtol=1e-5, msg=name)
    per_token = {"last_hidden_state": (right.last_hidden_state, left.last_hidden_state),
                 "centers": (right.centers[-1], left.centers[-1])}
    if getattr(right, "heatmaps", None) is not None:
        per_token["heatmaps"] = (right.heatmaps, left.heatmaps)
    for name, (r, lt) in per_token.items():
        torch.testing.assert_close(lt[lmask.bool()], r[mask.bool()], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_inputs_embeds_equal_input_ids(cls):
    model = build(cls)
    ids, mask, px = inputs()
    embeds = model.get_input_embeddings()(ids)
    extra = phrases(model, mask)
    assert_main_outputs_equal(model(pixel_values=px, inputs_embeds=embeds, attention_mask=mask, **extra),
                              model(ids, px, attention_mask=mask, **extra), atol=0)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(ids, px, inputs_embeds=embeds, **extra)


# -- attentions and hidden states ----------------------------------------------------------------------------


def literal_log_prior(centers: torch.Tensor, scales: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """log G = -((x_j - W c_x)^2 s_x^2 + (y_i - H c_y)^2 s_y^2) / β on cell centers (j + 0.5, i + 0.5), written
    out per cell: centers / scales (B, T, N_h, 2) -> (B, N_h, T, H*W)."""
    H, W = grid
    cells = [(j + 0.5, i + 0.5) for i in range(H) for j in range(W)]
    cx, cy = centers[..., 0] * W, centers[..., 1] * H  # (B, T, N_h)
    log_g = torch.stack([-((x - cx) ** 2 * scales[..., 0] ** 2 + (y - cy) ** 2 * scales[..., 1] ** 2) / BETA
                         for x, y in cells], dim=-1)  # (B, T, N_h, S)
    return log_g.permute(0, 2, 1, 3)


def cross_attention_inputs(model: VLCoAttnModel, *args, **kwargs) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Every fusion layer's SMCA query (the text after self-attention) and keys (image + positions)."""
    seen = []
    hooks = [layer.cross_attn.register_forward_hook(lambda m, a, o: seen.append((a[0], list(a[1]))))
             for layer in model.fusion.layers]
    try:
        model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def check_cross_attentions(model: VLCoAttnModel, out, ids, mask, px) -> None:
    """Each layer's maps, per level, are softmax(q k^T / sqrt(d_h) + log G + text padding ... none on image
    keys) computed here from the layer's own projections, with log G written out from the returned centers and
    scales (times the level's multiplier); each map's rows sum to 1."""
    B, T = ids.shape
    for lvl_inputs, layer, maps, priors, centers, scales in zip(
        cross_attention_inputs(model, ids, px, attention_mask=mask), model.fusion.layers, out.cross_attentions,
        out.log_priors, out.centers, out.scales, strict=True,
    ):
        query, keys = lvl_inputs
        attn = layer.cross_attn
        q = attn.q_proj(query).view(B, T, N_H, -1).transpose(1, 2)
        assert len(maps) == len(priors) == len(GRIDS)
        for lvl, (grid, p, log_g) in enumerate(zip(GRIDS, maps, priors, strict=True)):
            S = grid[0] * grid[1]
            assert p.shape == log_g.shape == (B, N_H, T, S)
            expected_g = literal_log_prior(centers, scales * model.level_scale_multipliers[lvl], grid)
            torch.testing.assert_close(log_g, expected_g, atol=1e-5, rtol=1e-5)
            k = attn.k_proj(keys[lvl]).view(B, S, N_H, -1).transpose(1, 2)
            logits = q @ k.transpose(-1, -2) / math.sqrt(D // N_H) + expected_g
            torch.testing.assert_close(p, logits.softmax(-1), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(p.sum(-1), torch.ones(B, N_H, T))


def check_self_attentions(model: VLCoAttnModel, out, mask) -> None:
    """The fused text self-attention of layer l is the collaborative softmax of its input hidden_states[l]."""
    additive = torch.zeros(mask.shape).masked_fill(mask == 0, torch.finfo(torch.float32).min)[:, None, None, :]
    real = mask.bool()
    for layer, x, probs in zip(model.fusion.layers, out.hidden_states[:-1], out.attentions, strict=True):
        _, expected = collaborative_attention_reference(layer.self_attention.self, x, additive)
        torch.testing.assert_close(probs.transpose(1, 2)[real], expected.transpose(1, 2)[real], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("source", ["call", "config"])
def test_base_model_attentions_and_hidden_states_with_their_shapes(source):
    flags = dict(output_hidden_states=True, output_attentions=True)
    model = build(VLCoAttnModel, **(flags if source == "config" else {}))
    ids, mask, px = inputs()
    out = model(ids, px, attention_mask=mask, **(flags if source == "call" else {}))
    B, T = ids.shape
    S = sum(h * w for h, w in GRIDS)
    assert len(out.hidden_states) == LAYERS + 1 and all(h.shape == (B, T, D) for h in out.hidden_states)
    assert out.hidden_states[-1] is out.last_hidden_state and out.hidden_states[0] is out.text_encoder_hidden_state
    assert len(out.attentions) == LAYERS and all(a.shape == (B, N_H, T, T) for a in out.attentions)
    assert len(out.image_attentions) == LAYERS - 1 and out.image_attentions[0].shape == (B, N_H, S, T)
    assert len(out.text_encoder_attentions) == TEXT_LAYERS and out.text_encoder_attentions[0].shape == (B, N_H, T, T)
    # CooBERT's hidden states are those of the text encoder run alone
    alone = model.text_encoder(ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.text_encoder_hidden_states) == TEXT_LAYERS + 1
    for got, want in zip(out.text_encoder_hidden_states, alone.hidden_states, strict=True):
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-6, rtol=1e-5)
    check_self_attentions(model, out, mask)
    check_cross_attentions(model, out, ids, mask, px)
    # the SDPA path's attended centers are the centroids of these maps, mixed by the level weights
    plain = model(ids, px, attention_mask=mask, output_attentions=False, output_hidden_states=False)
    assert plain.cross_attentions is plain.log_priors is plain.hidden_states is plain.attentions is None
    xy = [torch.tensor([((j + 0.5) / w, (i + 0.5) / h) for i in range(h) for j in range(w)]) for h, w in GRIDS]
    for layer, maps in enumerate(out.cross_attentions):
        centroid = sum(out.level_weights[layer][..., lvl, None, None] * (p @ xy[lvl]).transpose(1, 2)
                       for lvl, p in enumerate(maps))  # (B, T, N_h, 2)
        torch.testing.assert_close(plain.attended_centers[layer], centroid, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["call", "config"])
@pytest.mark.parametrize("cls", WITH_PHRASE[1:], ids=PHRASE_IDS[1:])
def test_heads_return_the_base_models_attentions_and_hidden_states(cls, source):
    flags = dict(output_hidden_states=True, output_attentions=True)
    model = build(cls, **(flags if source == "config" else {}))
    ids, mask, px = inputs()
    out = model(ids, px, attention_mask=mask, **phrases(model, mask), **(flags if source == "call" else {}))
    base = model.vlcoattn(ids, px, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    names = ("cross_attentions", "log_priors", "attentions", "image_attentions", "hidden_states",
             "text_encoder_hidden_states", "text_encoder_attentions")
    for name in names:
        got, want = getattr(out, name), getattr(base, name)
        assert got is not None and len(got) == len(want), name
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    plain = model(ids, px, attention_mask=mask, output_attentions=False, output_hidden_states=False,
                  **phrases(model, mask))
    assert all(getattr(plain, name) is None for name in names)


@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_eager_equals_sdpa(cls):
    """The same weights on both paths (SDPA is the default); the maps are equal too."""
    sdpa = build(cls)
    assert sdpa.config._attn_implementation == "sdpa"
    eager = copy.deepcopy(sdpa)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == eager.config.text_config._attn_implementation == "eager"
    ids, mask, px = inputs()
    extra = phrases(sdpa, mask)
    assert_main_outputs_equal(sdpa(ids, px, attention_mask=mask, **extra), eager(ids, px, attention_mask=mask, **extra))
    a = sdpa(ids, px, attention_mask=mask, output_attentions=True, **extra)
    b = eager(ids, px, attention_mask=mask, output_attentions=True, **extra)
    for name in ("cross_attentions", "log_priors", "attentions", "text_encoder_attentions"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0, msg=name)


def loss_of(cls, model, ids, mask, px) -> torch.Tensor:
    if cls is VLCoAttnModel:
        return model(ids, px, attention_mask=mask).last_hidden_state.pow(2).mean()
    targets = dict(labels=torch.tensor([0, 2, 1]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.3]] * 3))
    return model(ids, px, attention_mask=mask, **targets).loss


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_gradient_checkpointing_on_and_off_give_equal_loss_and_gradients(cls):
    """With dropout on (the recomputation must replay the same masks), backbone and layers checkpointed."""
    results = []
    for checkpointing in (False, True):
        model = build(cls, dropout=0.2).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        ids, mask, px = inputs()
        torch.manual_seed(3)
        loss = loss_of(cls, model, ids, mask, px)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, grads0), (loss1, grads1) = results
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    assert grads0.keys() == grads1.keys() and len(grads0) > 40
    for name in grads0:
        torch.testing.assert_close(grads1[name], grads0[name], atol=1e-6, rtol=1e-5, msg=name)


# -- embeddings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("new_size", [VOCAB + 10, VOCAB - 9], ids=["bigger", "smaller"])
@pytest.mark.parametrize("cls", WITH_PHRASE, ids=PHRASE_IDS)
def test_resize_token_embeddings(tmp_path, cls, new_size):
    """The text embeddings grow or shrink (old rows kept), the text config follows, the model still runs on
    the new ids and reloads from its directory."""
    model = build(cls)
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(new_size)
    n = min(VOCAB, new_size)
    assert model.config.text_config.vocab_size == new_size
    assert model.get_input_embeddings().weight.shape == (new_size, 32)
    torch.testing.assert_close(model.get_input_embeddings().weight[:n], old[:n], rtol=0, atol=0)
    ids, mask, px = inputs()
    ids = ids.clamp(max=new_size - 1)
    ids[0, 1] = new_size - 1
    out = model(ids, px, attention_mask=mask, **phrases(model, mask))
    model.save_pretrained(tmp_path)
    reloaded = cls.from_pretrained(tmp_path).eval()
    assert_main_outputs_equal(reloaded(ids, px, attention_mask=mask, **phrases(model, mask)), out, atol=0)


# -- torch.compile ------------------------------------------------------------------------------------------


def compiled_equals_eager(cls, backend: str) -> None:
    torch._dynamo.reset()
    model = build(cls)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    ids, mask, px = inputs()
    with torch.no_grad():
        for m in (mask, torch.ones_like(mask)):
            assert_main_outputs_equal(compiled(ids, px, attention_mask=m), model(ids, px, attention_mask=m))


def test_forward_is_one_graph():
    """``fullgraph=True`` traces the whole forward without a break on the data (e.g. whether the text has
    padding); the traced graph run eagerly gives the eager outputs."""
    compiled_equals_eager(VLCoAttnForMultitask, "eager")


@pytest.mark.slow
def test_compiled_forward_equals_eager():
    """Inductor's compiled forward (about 2 minutes on one CPU core) of the class that holds both heads."""
    compiled_equals_eager(VLCoAttnForMultitask, "inductor")


# -- pipelines ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """The two pipelines on one tiny multitask model with the real MiniLM tokenizer."""
    from transformers import pipeline

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    model = VLCoAttnForMultitask(tiny_config(text_config=text_config(vocab_size=tokenizer.vocab_size),
                                             vision_config=dict(image_size=[32, 48]),
                                             heads_config=dict(answer_vocab=ANSWERS)))
    root = tmp_path_factory.mktemp("vl_pipelines")
    model.save_pretrained(root)
    VLCoAttnProcessor.for_model(model, tokenizer, max_text_len=16).save_pretrained(root)
    return pipeline("vlcoattn-vqa", model=str(root)), pipeline("vlcoattn-grounding", model=str(root))


def test_vqa_pipeline_takes_transformers_call_shapes(pipelines):
    vqa, _ = pipelines
    image, other, q = str(sample_photo("coffee")), str(sample_photo("astronaut")), "what is in the cup?"
    expected = vqa(image, q, top_k=3)
    assert len(expected) == 3 and {a["answer"] for a in expected} <= set(ANSWERS)
    calls = [vqa(image=image, question=q, top_k=3), vqa(image, question=q, top_k=3), vqa(image, text=q, top_k=3),
             vqa({"image": image, "question": q}, top_k=3), vqa({"image": image, "text": q}, top_k=3)]
    assert all(c == expected for c in calls)
    pairs = [{"image": image, "question": q}, {"image": other, "question": "who is this?"}]
    listed = vqa(pairs, top_k=3)
    assert listed[0] == expected and listed[1] == vqa(other, "who is this?", top_k=3)
    assert vqa(image=[image, other], question=q, top_k=3) == [expected, vqa(other, q, top_k=3)]
    assert vqa(image, [q, "who is this?"], top_k=3) == [expected, vqa(image, "who is this?", top_k=3)]


def test_grounding_pipeline_takes_the_text_by_keyword(pipelines):
    _, ground = pipelines
    image, text = str(sample_photo("coffee")), "the cup"
    expected = ground(image, text)
    assert len(expected["box"]) == 4 and expected["heatmaps"]
    for got in (ground(image=image, text=text), ground(image, text=text), ground({"image": image, "text": text}),
                ground([{"image": image, "text": text}])[0]):
        assert got["box"] == expected["box"]


@pytest.mark.parametrize(
    ("which", "args", "kwargs", "message"),
    [(0, ("IMAGE",), {}, r"give an image and a question: pipe\(image, question\)"),
     (0, ({"image": "IMAGE"},), {}, r"got the keys \['image'\]"),
     (0, ({"image": "IMAGE", "question": "a", "text": "b"},), {}, "got the keys"),
     (0, ({"image": "IMAGE", "question": "a", "id": 3},), {}, "got the keys"),
     (0, ("IMAGE", "a"), {"question": "b"}, "give an image and a question"),
     (0, (["IMAGE"], ["a"]), {}, "a list of images takes one text"),
     (0, (), {"question": "a"}, "give an image and a question"),
     (0, ("IMAGE", "  "), {}, "the text must be a non-empty string"),
     (0, ({"image": "IMAGE", "question": 3},), {}, "the question must be a non-empty string"),
     (0, ("IMAGE", "a"), {"topk": 3}, r"unexpected argument\(s\) \['topk'\]"),
     (1, ("IMAGE",), {"question": "a"}, r"unexpected argument\(s\) \['question'\]"),
     (1, ({"image": "IMAGE", "question": "a"},), {}, r"give an image and a text: .*got the keys"),
     (1, (["IMAGE"],), {}, "got str")],
)
def test_pipelines_refuse_other_call_shapes_with_one_line(pipelines, which, args, kwargs, message):
    image = str(sample_photo("coffee"))

    def fill(x):
        if x == "IMAGE":
            return image
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        return [fill(v) for v in x] if isinstance(x, list) else x

    with pytest.raises(ValueError, match=message) as error:
        pipelines[which](*fill(list(args)), **kwargs)
    assert "\n" not in str(error.value)
