"""Inference: load a saved model once, predict many pairs; JSONL batches; visualisations.

    from vlcoattn.infer import Predictor, draw_prediction
    predictor = Predictor.from_pretrained("runs/ground", device="cpu", dtype="float32")
    pred = predictor.predict("photo.jpg", "the cup on the left")   # JSON-ready dict
    draw_prediction("photo.jpg", pred, "pred.png")

``tools/infer.py`` is the command line over these.
"""

from .batch import predict_jsonl
from .predictor import (
    DTYPES,
    TASKS,
    ClassifierPredictor,
    GeneratorPredictor,
    ImageInput,
    PhrasePredictor,
    Predictor,
    VisionPredictor,
    canvas_to_pixels,
    top_answers,
)
from .viz import draw_prediction, select_words

__all__ = [
    "DTYPES",
    "TASKS",
    "ClassifierPredictor",
    "GeneratorPredictor",
    "ImageInput",
    "PhrasePredictor",
    "Predictor",
    "VisionPredictor",
    "canvas_to_pixels",
    "draw_prediction",
    "predict_jsonl",
    "select_words",
    "top_answers",
]
