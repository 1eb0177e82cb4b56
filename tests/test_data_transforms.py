"""Box-aware letterbox / flip / crop / jitter and the inverse mapping of predictions."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlcoattn.data.read.transforms import (
    ImageTransform,
    Letterbox,
    crop_keeping_boxes,
    hflip,
    invert_boxes,
    letterbox,
    letterbox_params,
    normalize_boxes,
    swap_left_right,
)


def _image_with_box(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
    return image


def _red_box(image: Image.Image) -> tuple[int, int, int, int]:
    a = np.asarray(image).astype(int)
    ys, xs = np.nonzero((a[..., 0] > 200) & (a[..., 1] < 100))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_letterbox_params_center_and_scale():
    p = letterbox_params(200, 100, 64)
    assert (p.scale_x, p.scale_y, p.pad_x, p.pad_y, p.out_w, p.out_h) == (0.32, 0.32, 0, 16, 64, 64)
    p = letterbox_params(50, 100, (32, 48))  # (H, W)
    assert (p.out_w, p.out_h, p.pad_x, p.pad_y) == (48, 32, 16, 0)
    with pytest.raises(ValueError, match="positive"):
        letterbox_params(10, 10, 0)


def test_letterboxed_boxes_follow_the_pixels():
    box = (120, 30, 180, 90)
    image = _image_with_box(300, 150, box)
    canvas, boxes, params = letterbox(image, np.array([box], float), 96, fill=(0, 0, 0))
    assert canvas.size == (96, 96) and params.pad_y == 24
    assert np.abs(np.array(_red_box(canvas)) - boxes[0]).max() <= 1.0
    assert canvas.getpixel((5, 5)) == (0, 0, 0)  # padding


def test_invert_boxes_roundtrip_single_and_batch():
    rng = np.random.default_rng(0)
    rows, originals, preds = [], [], []
    for w, h in [(300, 150), (90, 200), (64, 64), (1001, 333)]:
        x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        box = np.array([[x0, y0, x0 + w / 3, y0 + h / 4]])
        _, on_canvas, params = letterbox(Image.new("RGB", (w, h)), box, (96, 128), fill=(0, 0, 0))
        pred = normalize_boxes(on_canvas, params.out_w, params.out_h)
        back = invert_boxes(pred[0], params)
        assert torch.allclose(back.double(), torch.tensor(box[0]), atol=1e-3)
        rows.append(params.as_tensor())
        originals.append(box[0])
        preds.append(pred[0])
    batch = invert_boxes(torch.stack(preds), torch.stack(rows).float())
    assert torch.allclose(batch.double(), torch.tensor(np.stack(originals)), atol=0.05)


def test_invert_clips_to_the_original_image():
    params = Letterbox(0.5, 0.5, 0, 10, 100, 60, 50, 50)
    out = invert_boxes(torch.tensor([0.5, 0.5, 1.0, 1.0]), params)  # whole canvas, including padding
    assert out.tolist() == [0.0, 0.0, 100.0, 60.0]


def test_hflip_moves_boxes_and_swap_left_right_keeps_case():
    box = (10, 5, 30, 25)
    image = _image_with_box(100, 40, box)
    flipped, boxes = hflip(image, np.array([box], float))
    assert tuple(boxes[0]) == (70, 5, 90, 25) == _red_box(flipped)
    text = "Is the Left circle left of the leftmost square? LEFT, right-hand, Rightmost, bright, leftover"
    assert swap_left_right(text) == (
        "Is the Right circle right of the rightmost square? RIGHT, left-hand, Leftmost, bright, rightover"
    )
    assert swap_left_right(swap_left_right(text)) == text


def test_crop_keeps_every_box_whole():
    rng = random.Random(0)
    image = Image.new("RGB", (200, 120))
    boxes = np.array([[20.5, 30.0, 60.0, 50.0], [150.0, 80.0, 190.0, 119.5]])
    for _ in range(200):
        crop, moved = crop_keeping_boxes(image, boxes, rng, min_scale=0.3)
        w, h = crop.size
        assert (moved[:, :2] >= 0).all() and (moved[:, 2] <= w).all() and (moved[:, 3] <= h).all()
        assert np.allclose(moved[:, 2:] - moved[:, :2], boxes[:, 2:] - boxes[:, :2])
        assert w >= 0.3 * 200 - 1 and h >= 0.3 * 120 - 1
    crop, _ = crop_keeping_boxes(image, np.zeros((0, 4)), rng, min_scale=0.5)
    assert crop.size[0] >= 100 and crop.size[1] >= 60


def test_image_transform_is_deterministic_given_the_rng_and_swaps_words_on_flip():
    box = (10, 5, 30, 25)
    image = _image_with_box(100, 40, box)
    t = ImageTransform((32, 64), (128, 128, 128), augment=True, flip_prob=1.0, jitter=0.2, crop_min_scale=0.8)
    a = t(image, np.array([box], float), ["the box on the left", "left"], random.Random(3))
    b = t(image, np.array([box], float), ["the box on the left", "left"], random.Random(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[2] == ["the box on the right", "right"]
    assert a[0].shape == (3, 32, 64) and a[0].dtype == torch.uint8
    plain = ImageTransform((32, 64), (128, 128, 128))
    pixels, _boxes, texts, params = plain(image, np.array([box], float), ["left"], None)
    assert texts == ["left"] and (params.scale_x, params.pad_y) == (0.64, 3)
    assert pixels[:, 0, 0].tolist() == [128, 128, 128] and pixels[:, 10, 60].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="rng"):
        t(image, np.zeros((0, 4)), [], None)


def test_the_loader_options_make_the_processors_transform_once_and_a_given_one_is_used(tmp_path):
    """``image_transform(processor, cfg)``: the processor's canvas, fill and resampling with ``cfg``'s
    ``augment`` / ``color_jitter`` / ``crop_min_scale`` (none without ``cfg``; None for a tokenizer), and
    the decoder of ``decoder_and_collator`` holds exactly the transform it is given."""
    from transformers import AutoTokenizer

    from vlcoattn import VLCoAttnImageProcessor, VLCoAttnProcessor
    from vlcoattn.assets import minilm_dir
    from vlcoattn.data import LoaderConfig, decoder_and_collator, image_transform

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    processor = VLCoAttnProcessor(VLCoAttnImageProcessor(size=(32, 48), image_mean=(0.2, 0.4, 0.6)), tokenizer)
    cfg = LoaderConfig(augment=True, color_jitter=0.1, crop_min_scale=0.7)
    assert image_transform(processor, cfg) == ImageTransform(
        (32, 48), (51, 102, 153), augment=True, jitter=0.1, crop_min_scale=0.7, reducing_gap=3.0)
    assert image_transform(processor) == ImageTransform((32, 48), (51, 102, 153), reducing_gap=3.0)
    assert image_transform(tokenizer, cfg) is None
    mine = ImageTransform((16, 16), (0, 0, 0), augment=True, flip_prob=1.0)
    decoder, _ = decoder_and_collator(processor, mine, seed=5)
    assert decoder.transform is mine and decoder.seed == 5
    assert decoder_and_collator(processor)[0].transform == image_transform(processor)
