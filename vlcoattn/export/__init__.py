"""ONNX export: ``vlcoattn-export --model DIR --out DIR`` (:func:`export_onnx`) and the torch-free runner.

The export folder holds ``model.onnx`` (dynamic batch and text length), the saved processor or
tokenizer, ``export.json`` (task, inputs, named outputs, preprocessing, answer / label names) and
``vlcoattn_runtime.py`` (:mod:`vlcoattn.export.runtime`), which answers and grounds with numpy,
Pillow, tokenizers and onnxruntime alone. Needs the ``onnx`` extra (``pip install 'vlcoattn[onnx]'``).
"""

from .exporter import (
    EXPORT_FILE,
    ONNX_FILE,
    OUTPUTS,
    RUNTIME_FILE,
    TOLERANCE,
    ExportModule,
    ExportReport,
    export_onnx,
    output_field,
    require_onnx,
)

__all__ = [
    "EXPORT_FILE", "ONNX_FILE", "OUTPUTS", "RUNTIME_FILE", "TOLERANCE", "ExportModule", "ExportReport", "export_onnx",
    "output_field", "require_onnx",
]
