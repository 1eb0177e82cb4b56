"""Answer, ground and classify with an exported model, without torch: numpy, Pillow, tokenizers, onnxruntime.

    import sys; sys.path.insert(0, "runs/demo/onnx")   # the folder vlcoattn-export wrote
    from vlcoattn_runtime import OnnxPredictor

    predictor = OnnxPredictor("runs/demo/onnx")
    predictor.predict("photo.jpg", "the red cup")   # {"answers": [{"answer", "probability"}, ...], "box": [x0, y0, x1, y1]}

    python runs/demo/onnx/vlcoattn_runtime.py runs/demo/onnx --image photo.jpg --text "the red cup"

``vlcoattn-export`` copies this file beside ``model.onnx``, so the folder runs where neither this
package nor torch is installed; it imports nothing of ``vlcoattn``. It prepares inputs as the saved
processor does, with the same Pillow calls in the same order (EXIF orientation, exotic modes to RGB,
JPEG draft decoding, letterbox with a bilinear resize, ``(x - 255 mean) / (255 std)`` in float32),
so the pixels and tokens equal the processor's bit for bit, and maps boxes back to original pixels as
``post_process_grounding`` does. tests/test_export.py checks both against the torch ``Predictor``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from PIL import Image, ImageOps, UnidentifiedImageError
from tokenizers import Tokenizer

EXPORT_FILE = "export.json"
BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


# ----------------------------------------------------------------------------- images


def _open(data: bytes | str | Path, max_pixels: int) -> Image.Image:
    """The image's header, refusing more than ``max_pixels`` before any pixel is decoded."""
    name = str(data) if isinstance(data, (str, Path)) else f"<{len(data)} bytes>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(data if isinstance(data, (str, Path)) else io.BytesIO(data))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as e:
        raise ValueError(f"{name}: not a usable image: {e}") from None
    w, h = image.size
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise ValueError(f"{name}: {w}x{h} pixels is empty or exceeds max_pixels={max_pixels}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> RGB: 16/32-bit and float rescaled to 8 bit, alpha composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image).astype(np.float64)
        if mode == "F" and array.size and array.max() <= 1.0:
            array = array * 255.0
        elif mode != "F" and array.size and array.max() > 255:
            array = array / 257.0
        return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def decode(data: bytes | str | Path, max_pixels: int, fit: tuple[int, int] | None) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image, full-size (w, h)) with EXIF orientation applied; a JPEG larger than ``fit`` (w, h)
    decodes at 1/2 .. 1/8 scale while it still covers it."""
    image = _open(data, max_pixels)
    try:
        transposed = image.getexif().get(0x0112, 1) in TRANSPOSING_ORIENTATIONS
        w, h = image.size
        if fit is not None and image.format == "JPEG":
            box_w, box_h = (fit[1], fit[0]) if transposed else fit
            scale = min(box_w / w, box_h / h, 1.0)
            image.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
        image.load()
        return to_rgb(ImageOps.exif_transpose(image)), ((h, w) if transposed else (w, h))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        name = str(data) if isinstance(data, (str, Path)) else f"<{len(data)} bytes>"
        raise ValueError(f"{name}: cannot decode image: {e}") from None


def letterbox(image: Image.Image, size: tuple[int, int], fill: Sequence[int],
              reducing_gap: float | None) -> tuple[np.ndarray, list[float]]:
    """(uint8 (H, W, 3) canvas, [scale_x, scale_y, pad_x, pad_y] of the image in it): the aspect kept,
    centred, the rest ``fill``."""
    (out_h, out_w), (w, h) = size, image.size
    scale = min(out_w / w, out_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((new_w, new_h), Image.BILINEAR, reducing_gap=reducing_gap) if (new_w, new_h) != (w, h) else image
    pad_x, pad_y = (out_w - new_w) // 2, (out_h - new_h) // 2
    canvas = resized
    if (new_w, new_h) != (out_w, out_h):
        canvas = Image.new("RGB", (out_w, out_h), tuple(fill))
        canvas.paste(resized, (pad_x, pad_y))
    return np.asarray(canvas, dtype=np.uint8), [new_w / w, new_h / h, pad_x, pad_y]


class ImagePreparer:
    """Image file or bytes -> (float32 (3, H, W) pixel values, letterbox (8,)) as the processor prepares them."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.size = (int(settings["height"]), int(settings["width"]))
        self.mean = np.asarray(settings["mean"], dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
        self.std = np.asarray(settings["std"], dtype=np.float32).reshape(3, 1, 1) * np.float32(255.0)
        self.fill, self.max_pixels = settings["fill"], int(settings["max_pixels"])
        self.fast_decode, self.reducing_gap = bool(settings["fast_decode"]), settings["reducing_gap"]

    def __call__(self, image: bytes | str | Path) -> tuple[np.ndarray, np.ndarray]:
        fit = (self.size[1], self.size[0]) if self.fast_decode else None
        decoded, (orig_w, orig_h) = decode(image, self.max_pixels, fit)
        draft_x, draft_y = decoded.size[0] / orig_w, decoded.size[1] / orig_h  # < 1 after a JPEG draft
        canvas, (sx, sy, px, py) = letterbox(decoded, self.size, self.fill, self.reducing_gap)
        pixels = (canvas.transpose(2, 0, 1).astype(np.float32) - self.mean) / self.std
        placement = [sx * draft_x, sy * draft_y, px, py, orig_w, orig_h, self.size[1], self.size[0]]
        return pixels, np.asarray(placement, dtype=np.float32)  # float32, as the processor's letterbox


def boxes_to_pixels(boxes: np.ndarray, letterbox: np.ndarray) -> np.ndarray:
    """(B, 4) normalized (cx, cy, w, h) on the canvases -> (B, 4) (x0, y0, x1, y1) pixels of the original
    images, clipped to them; ``letterbox`` (B, 8) as :class:`ImagePreparer` returns it."""
    sx, sy, px, py, ow, oh, cw, ch = letterbox.astype(np.float64).T
    cx, cy, w, h = boxes.astype(np.float64).T
    x0 = np.minimum(np.maximum(((cx - 0.5 * w) * cw - px) / sx, 0), ow)
    y0 = np.minimum(np.maximum(((cy - 0.5 * h) * ch - py) / sy, 0), oh)
    x1 = np.minimum(np.maximum(((cx + 0.5 * w) * cw - px) / sx, 0), ow)
    y1 = np.minimum(np.maximum(((cy + 0.5 * h) * ch - py) / sy, 0), oh)
    return np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- outputs


def probabilities(logits: np.ndarray, kind: str) -> np.ndarray:
    """Row-wise ``sigmoid`` or ``softmax`` of (B, N) logits, in float32."""
    logits = logits.astype(np.float32)
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def top(probs: np.ndarray, k: int, names: Sequence[str] | dict[int, str], key: str) -> list[dict[str, Any]]:
    """The ``k`` most probable entries of (N,) ``probs`` as ``[{key: name, "probability": p}, ...]``."""
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    order = np.argsort(-probs, kind="stable")[:k]
    return [{key: names[int(i)], "probability": round(float(probs[i]), 6)} for i in order]


class OnnxPredictor:
    """An exported folder (``model.onnx`` + ``export.json`` + tokenizer): :meth:`predict` (image-text
    models), :meth:`classify` (text classifiers), :meth:`run` (every named output, any model)."""

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        self.directory = Path(directory)
        if not (self.directory / EXPORT_FILE).is_file():
            raise FileNotFoundError(f"{self.directory} has no {EXPORT_FILE}: not a folder vlcoattn-export wrote")
        self.config = json.loads((self.directory / EXPORT_FILE).read_text())
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(self.directory / self.config["onnx_file"]), options, providers=["CPUExecutionProvider"])
        self.tokenizer = self._tokenizer(self.config["text"])
        self.images = ImagePreparer(self.config["image"]) if "image" in self.config else None
        self.input_names = [i["name"] for i in self.config["inputs"]]

    def _tokenizer(self, text: dict[str, Any]) -> Tokenizer:
        """The saved tokenizer, truncating and padding as the predictor does."""
        tokenizer = Tokenizer.from_file(str(self.directory / text["tokenizer_file"]))
        tokenizer.enable_truncation(max_length=text["max_length"], direction=text["truncation_side"])
        tokenizer.enable_padding(direction=text["padding_side"], pad_id=text["pad_id"], pad_type_id=text["pad_type_id"],
                                 pad_token=text["pad_token"], pad_to_multiple_of=text["pad_to_multiple_of"])
        return tokenizer

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token inputs (int64 (B, T)) of ``texts``, and ``truncated`` (B,): whether each text was cut."""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"empty or non-string text {text!r}: nothing to predict from")
        encodings = self.tokenizer.encode_batch(list(texts))
        inputs = {name: np.asarray([getattr(e, attr) for e in encodings], dtype=np.int64) for name, attr in
                  (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))}
        return {**inputs, "truncated": np.asarray([bool(e.overflowing) for e in encodings])}

    def run(self, texts: Sequence[str], images: Sequence[bytes | str | Path] | None = None) -> dict[str, np.ndarray]:
        """Every named output of one forward pass (see ``export.json``), plus ``truncated`` (B,) and, for
        images, ``letterbox`` (B, 8)."""
        inputs = self.encode(texts)
        letterboxes = None
        if self.images is None and images is not None:
            raise ValueError(f"a {self.config['model_class']} takes no images")
        if self.images is not None:
            if images is None or len(images) != len(texts):
                raise ValueError("an image-text model needs one image per text")
            pixels, boxes = zip(*(self.images(image) for image in images))
            inputs["pixel_values"], letterboxes = np.stack(pixels), np.stack(boxes)
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, {k: inputs[k] for k in self.input_names})))
        outputs["truncated"] = inputs["truncated"]
        return outputs if letterboxes is None else {**outputs, "letterbox": letterboxes}

    def predict_batch(self, pairs: Sequence[tuple[bytes | str | Path, str]], top_k: int = 5) -> list[dict[str, Any]]:
        """Top-k answers and / or the box (original pixels) of each (image, text), in one forward pass."""
        if self.images is None:
            raise ValueError(f"a {self.config['model_class']} takes no image: use classify() or run()")
        texts = [text for _, text in pairs]
        out = self.run(texts, [image for image, _ in pairs])
        results = []
        for b, text in enumerate(texts):
            result: dict[str, Any] = {"task": self.config["task"], "text": text,
                                      "image_size": [int(out["letterbox"][b, 4]), int(out["letterbox"][b, 5])]}
            if "answers" in self.config:  # an answer head: its vocabulary and probability
                answers = self.config["answers"]
                probs = probabilities(out["logits"][b:b + 1], answers["probability"])[0]
                result["answers"] = top(probs, top_k, answers["vocab"], "answer")
            if "pred_boxes" in out:  # a box head
                box = boxes_to_pixels(out["pred_boxes"][b:b + 1], out["letterbox"][b:b + 1])[0]
                result["box"] = [round(float(v), 2) for v in box]
            results.append({**result, "truncated": bool(out["truncated"][b])})
        return results

    def predict(self, image: bytes | str | Path, text: str, top_k: int = 5) -> dict[str, Any]:
        """:meth:`predict_batch` of one pair."""
        return self.predict_batch([(image, text)], top_k)[0]

    def classify_batch(self, texts: Sequence[str], top_k: int = 5) -> list[dict[str, Any]]:
        """Label and top-k probabilities (``value`` for regression) of each text, in one forward pass."""
        labels = self.config.get("labels")
        if labels is None:
            raise ValueError(f"a {self.config['model_class']} is not a text classifier")
        out = self.run(texts)
        id2label = {int(i): name for i, name in labels["id2label"].items()}
        results = []
        for text, row, cut in zip(texts, out["logits"], out["truncated"]):
            result: dict[str, Any] = {"task": self.config["task"], "text": text}
            if labels["probability"] == "none":
                result["value"] = [round(float(v), 6) for v in row]
            else:
                probs = probabilities(row[None], labels["probability"])[0]
                result["label"] = id2label[int(np.argmax(probs))]
                result["probabilities"] = top(probs, top_k, id2label, "label")
            results.append({**result, "truncated": bool(cut)})
        return results

    def classify(self, text: str, top_k: int = 5) -> dict[str, Any]:
        """:meth:`classify_batch` of one text."""
        return self.classify_batch([text], top_k)[0]


def main(argv: Sequence[str] | None = None) -> int:
    """``python vlcoattn_runtime.py DIR --text T [--image I] [--top-k K]``: one JSON result on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="the folder vlcoattn-export wrote")
    parser.add_argument("--text", required=True, help="question / referring expression / text to classify")
    parser.add_argument("--image", help="image file (image-text models)")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        predictor = OnnxPredictor(args.directory)
        result = (predictor.predict(args.image, args.text, args.top_k) if args.image is not None
                  else predictor.classify(args.text, args.top_k))
    except (ValueError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
