"""Phrase grounding: one box for every phrase of a caption, from the fused tokens of its span.

    fused text tokens h (B, T, d), base centers c (B, T, 2), phrase_tokens m (B, P, T)
    ─► w = m / |m|  (the mean over each span's tokens)
    ─► h_p = w h (B, P, d),  c_p = w c (B, P, 2)
    ─► BoxHead(h_p, c_p): center sigmoid(logit(c_p) + Δ), (w, h) from the same MLP ─► pred_boxes (B, P, 4)

The reference point of a phrase is the mean of its tokens' base centers (where they attended in the
last fusion layer, as for the grounding head's token), so the box loss reaches every span token's
attention. The loss is the grounding task's L1 + GIoU (:func:`grounding_loss`), averaged over the
trained phrases; a phrase with several boxes is trained against their enclosing box (the collator's
``phrase_boxes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from ..tasks.spec import SUPERVISED_TOKENS
from .modeling_vlcoattn import (
    VLCoAttnForMultitask,
    VLCoAttnMultitaskOutput,
    _num_items,
    _reject_extra_arguments,
    _VLCoAttnTaskModel,
    phrase_loss,
    span_means,
)

__all__ = ["VLCoAttnForPhraseGrounding", "VLCoAttnForPhraseMultitask", "VLCoAttnPhraseGroundingOutput",
           "VLCoAttnPhraseMultitaskOutput", "span_means"]


@dataclass
class VLCoAttnPhraseGroundingOutput(ModelOutput):
    """pred_boxes (B, P, 4) normalized (cx, cy, w, h), one per phrase; phrase_mask (B, P) the phrases that
    have tokens (the others are padding, or cut off by the text length, and their boxes mean nothing);
    loss = w_l1 * loss_l1 + w_giou * loss_giou over the trained phrases, plus the supervision losses when
    they are on (unweighted: loss_prior_center, loss_prior_scale, loss_attention_mass). heatmaps (B, T, H, W):
    every token's head-averaged prior on the last level (eval mode only; None without a prior), what the
    phrase score of :meth:`VLCoAttnProcessor.post_process_phrase_grounding` reads."""

    loss: torch.Tensor | None = None
    loss_l1: torch.Tensor | None = None
    loss_giou: torch.Tensor | None = None
    loss_prior_center: torch.Tensor | None = None
    loss_prior_scale: torch.Tensor | None = None
    loss_attention_mass: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    phrase_mask: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    reference_centers: torch.Tensor | None = None
    attended_centers: tuple[torch.Tensor, ...] | None = None
    centers: tuple[torch.Tensor, ...] | None = None
    scales: tuple[torch.Tensor, ...] | None = None
    heatmaps: torch.Tensor | None = None
    cross_attentions: tuple | None = None
    log_priors: tuple | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    image_attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    text_encoder_attentions: tuple[torch.Tensor, ...] | None = None


class VLCoAttnForPhraseGrounding(_VLCoAttnTaskModel):
    """A box per phrase from the mean of its span's fused tokens (:class:`BoxHead`, reference point: the
    mean of their base centers). Targets: ``phrase_tokens`` (B, P, T), ``phrase_boxes`` (B, P, 4) and
    ``phrase_mask`` (B, P), as the ``phrase`` task's collator builds them."""

    has_boxes = True
    output_class = VLCoAttnPhraseGroundingOutput
    extra_inputs = ("phrase_tokens",)  # forward() inputs beyond the text and the image
    phrase_boxes_output = "pred_boxes"

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        phrase_tokens: torch.Tensor | None = None,
        phrase_boxes: torch.Tensor | None = None,
        phrase_mask: torch.Tensor | None = None,
        phrase_rows: torch.Tensor | None = None,
        num_items_in_batch: int | dict[str, int] | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> VLCoAttnPhraseGroundingOutput | tuple:
        """input_ids (B, T), attention_mask (B, T), pixel_values (B, 3, H, W); phrase_tokens (B, P, T) bool,
        which tokens each phrase covers (required: it says which boxes to predict). Padding may be on
        either side: a phrase is the mean of its tokens wherever they sit.

        phrase_boxes (B, P, 4) normalized cxcywh targets, phrase_mask (B, P) the phrases that train
        (default: every phrase with tokens), phrase_rows (B,) the rows whose phrases train (default: all;
        see :func:`~vlcoattn.models.phrase_loss`). num_items_in_batch: the trained phrases of the whole
        optimizer step (``{"phrase": n}`` or n); default: the mean over this batch's.
        output_attentions / output_hidden_states / inputs_embeds / return_dict: as the other VLCoAttn heads
        (call value, else the config's); an unknown keyword is a ValueError.
        """
        _reject_extra_arguments(type(self).__name__, kwargs)
        if phrase_tokens is None:
            raise ValueError("VLCoAttnForPhraseGrounding needs phrase_tokens (B, P, T): which tokens each phrase covers")
        return_dict = self.output_flags(None, None, return_dict)[2]
        out, maps = self.fused_outputs(input_ids, pixel_values, attention_mask, token_type_ids, phrase_boxes,
                                       output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                       inputs_embeds=inputs_embeds)
        pred, present = self.box_head.phrases(out.last_hidden_state, out.base_centers, phrase_tokens)  # (B, P, 4)
        fields = self.output_class.__dataclass_fields__
        result = {k: v for k, v in out.items() if k in fields}  # the base model's fields that are set
        result.update(pred_boxes=pred, phrase_mask=present)
        if not self.training:  # read by inference (the phrase score); a training step has no use for them
            result["heatmaps"] = self.vlcoattn.token_heatmaps(out)
        if phrase_boxes is not None:
            heads = self.config.heads_config
            result["loss"], result["loss_l1"], result["loss_giou"] = phrase_loss(
                pred, present, phrase_boxes, phrase_mask, phrase_rows, float(heads.box_l1_weight),
                float(heads.box_giou_weight), _num_items(num_items_in_batch, "phrase"),
            )
            parts: dict = {}
            result["loss"] = sum(self.supervision_losses(out, maps, phrase_tokens, phrase_boxes, phrase_mask,
                                                         _num_items(num_items_in_batch, SUPERVISED_TOKENS), parts),
                                 result["loss"])
            result.update(parts)
        output = VLCoAttnPhraseGroundingOutput(**result)
        return output if return_dict else output.to_tuple()


@dataclass
class VLCoAttnPhraseMultitaskOutput(VLCoAttnMultitaskOutput):
    """:class:`VLCoAttnMultitaskOutput` (loss = loss_vqa + grounding box loss + phrase box loss, plus the
    supervision losses when on; logits (B, num_answers) and pred_boxes (B, 4) for every row), then the phrase
    head's: pred_phrase_boxes (B, P, 4) one box per phrase of ``phrase_tokens`` (None without them),
    phrase_mask (B, P) the phrases that have tokens, loss_phrase_l1 / loss_phrase_giou its L1 and GIoU."""

    loss_phrase_l1: torch.Tensor | None = None
    loss_phrase_giou: torch.Tensor | None = None
    pred_phrase_boxes: torch.Tensor | None = None
    phrase_mask: torch.Tensor | None = None


class VLCoAttnForPhraseMultitask(VLCoAttnForMultitask):
    """VQA, grounding and phrase grounding in one model: :class:`VLCoAttnForMultitask`'s answer and box heads
    plus a phrase head, its own :class:`BoxHead` on each phrase's span mean (:meth:`BoxHead.phrases`, as
    :class:`VLCoAttnForPhraseGrounding` boxes phrases). A batch may mix the three tasks' rows: the phrase
    head's loss trains on the phrases of the ``phrase_rows`` only, while the priors' supervision (when on)
    reads every row's ``phrase_mask``. Without ``phrase_tokens`` it answers and grounds as the two-head model."""

    has_phrases = True
    output_class = VLCoAttnPhraseMultitaskOutput
    extra_inputs = ("phrase_tokens",)  # what phrase grounding adds to the text and the image
    phrase_boxes_output = "pred_phrase_boxes"
