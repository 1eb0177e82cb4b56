"""ONNX export: onnxruntime equals eager PyTorch on inputs the processor prepares (batch 1 and a padded
batch of different text lengths), the torch-free runner prepares the processor's pixels and tokens bit
for bit and answers / grounds / classifies as the torch Predictor does (in a process that never imports
torch), and vlcoattn-export end to end, with one clear line for each bad argument."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from vlcoattn.assets import minilm_dir, sample_photo
from vlcoattn.infer import Predictor
from vlcoattn.loading import write_task_file
from vlcoattn.models import (
    VLCoAttnConfig,
    VLCoAttnForGrounding,
    VLCoAttnForMultitask,
    VLCoAttnForQuestionAnswering,
    VLCoAttnProcessor,
)
from vlcoattn.text import CooBertConfig, CooBertForCausalLM, CooBertForSequenceClassification, CooBertModel
from vlcoattn.utils.cli import run_cli

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from vlcoattn.export import EXPORT_FILE, ONNX_FILE, RUNTIME_FILE, export_onnx, require_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ANSWERS = ["yes", "no", "red", "blue", "cat", "two"]
LABELS = {0: "business", 1: "sport", 2: "tech"}
MAX_TOKENS = 24  # the processor's text length (positions: 32)
PAIRS = [("astronaut", "what is the woman wearing?"), ("china", "the building on the left of the bridge"),
         ("chelsea", "cat")]
TEXTS = ["Shares fell sharply after the results.", "A goal in the last minute", "a new phone " * 12]
VISION_OUTPUTS = {"logits", "reference_centers", "centers", "scales", "attended_centers", "last_hidden_state"}
OUTPUTS = {  # what each export must name: the heads' outputs and the priors
    "multi": VISION_OUTPUTS | {"pred_boxes", "heatmaps"},
    "vqa": VISION_OUTPUTS,
    "ground": VISION_OUTPUTS - {"logits"} | {"pred_boxes", "heatmaps"},
    "cls": {"logits"},
    "encoder": {"last_hidden_state", "pooler_output"},
}


def _text_config(vocab_size: int, **kw) -> CooBertConfig:
    return CooBertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, shared_key_dim=16, max_position_embeddings=32, **kw)


def _vl_config(vocab_size: int, **kw) -> VLCoAttnConfig:
    vision = dict(backbone="test_resnet", image_size=[64, 96], out_indices=[-2, -1])  # two levels
    return VLCoAttnConfig(text_config=_text_config(vocab_size), vision_config=vision,
                          coattention_config=dict(num_layers=2, two_way=True), **kw)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread on the shared cores


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny saved models (random weights, the real MiniLM tokenizer; image-text ones with the processor
    the trainer saves), by name -> directory."""
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    root = tmp_path_factory.mktemp("export_models")
    V = tok.vocab_size
    torch.manual_seed(0)
    built = {
        "multi": VLCoAttnForMultitask(_vl_config(V, heads_config=dict(answer_vocab=ANSWERS))),
        "vqa": VLCoAttnForQuestionAnswering(_vl_config(V, heads_config=dict(answer_vocab=ANSWERS, answer_loss="ce"))),
        "ground": VLCoAttnForGrounding(_vl_config(V)),
        "cls": CooBertForSequenceClassification(_text_config(V, num_labels=3, id2label=LABELS)),
        "encoder": CooBertModel(_text_config(V)),
        "lm": CooBertForCausalLM(_text_config(V)),
    }
    dirs = {}
    for name, model in built.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        if hasattr(model.config, "vision_config"):
            VLCoAttnProcessor.for_model(model, tok, max_text_len=MAX_TOKENS).save_pretrained(dirs[name])
            write_task_file(dirs[name], {"multi": "vqa+ground", "vqa": "vqa", "ground": "ground"}[name])
        else:
            tok.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    """name -> export dir, exported on first use."""
    root = tmp_path_factory.mktemp("exported")
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            export_onnx(models[name], root / name)
            done[name] = root / name
        return done[name]

    return get


def _eager(model, inputs: dict[str, torch.Tensor], names: set[str]) -> dict[str, np.ndarray]:
    """The named outputs of eager PyTorch (SDPA, as loaded): per-layer ones are the last layer's."""
    with torch.no_grad():
        out = model(**inputs, return_dict=True)
    per_layer = {"centers": out.get("centers"), "scales": out.get("scales"), "attended_centers": out.get("attended_centers")}
    return {n: (per_layer[n][-1] if n in per_layer else out[n]).numpy() for n in names}


def _check_session(out_dir: Path, model, inputs: dict[str, torch.Tensor], names: set[str]) -> None:
    session = onnxruntime.InferenceSession(str(out_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()],
                   session.run(None, {k: v.numpy() for k, v in inputs.items()})))
    assert set(got) == names
    want = _eager(model, inputs, names)
    for n in names:
        assert got[n].shape == want[n].shape, n
        np.testing.assert_allclose(got[n], want[n], atol=1e-4, rtol=0, err_msg=n)


@pytest.mark.parametrize("name", ["multi", "cls", "encoder",
                                  pytest.param("vqa", marks=pytest.mark.slow),
                                  pytest.param("ground", marks=pytest.mark.slow)])
def test_onnxruntime_equals_eager_at_batch_1_and_a_padded_batch(name, models, exported):
    """Every named output (logits, boxes, priors, heatmaps, hidden states) within 1e-4 of eager PyTorch, on
    the processor's inputs: one pair, and three of different text lengths (padding in the batch)."""
    out_dir = exported(name)
    description = json.loads((out_dir / EXPORT_FILE).read_text())
    assert {o["name"] for o in description["outputs"]} == OUTPUTS[name]
    assert all(i["shape"][:2] == ["batch", "text"] for i in description["inputs"] if i["name"] != "pixel_values")
    predictor = Predictor.from_pretrained(models[name]) if name != "encoder" else None
    model = predictor.model if predictor else CooBertModel.from_pretrained(models[name]).eval()
    for rows in (1, 3):
        if description["model_class"].startswith("VLCoAttn"):
            pairs = PAIRS[:rows]
            inputs = dict(predictor.processor(images=[str(sample_photo(p)) for p, _ in pairs], text=[t for _, t in pairs]))
            inputs.pop("letterbox")
        else:
            tok = AutoTokenizer.from_pretrained(models[name])
            inputs = dict(tok(TEXTS[:rows], padding="longest", truncation=True, max_length=MAX_TOKENS,
                              return_tensors="pt", return_token_type_ids=True))
        assert rows == 1 or not bool(inputs["attention_mask"].all()), "the batch must hold padding"
        _check_session(out_dir, model, inputs, OUTPUTS[name])


def _runner(out_dir: Path):
    """The runner copied beside the model, imported from there (in this process: torch is loaded anyway)."""
    spec = importlib.util.spec_from_file_location("vlcoattn_runtime_under_test", out_dir / RUNTIME_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Files the processor decodes in different ways: PNG, JPEG decoded at reduced scale (draft), a
    sideways JPEG with an EXIF orientation, RGBA, palette with transparency, grayscale and 16-bit."""
    root = tmp_path_factory.mktemp("export_images")
    photo = Image.open(sample_photo("chelsea")).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.ROTATE_90).save(root / "exif.jpg", quality=90, exif=exif)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    rgba.save(root / "rgba.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png", transparency=0)
    photo.convert("L").save(root / "gray.jpg")
    Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(root / "gray16.png")
    photo.resize((31, 140)).save(root / "tall.png")
    return [str(sample_photo("astronaut")), str(sample_photo("china")),
            *(str(root / n) for n in ("exif.jpg", "rgba.png", "palette.png", "gray.jpg", "gray16.png", "tall.png"))]


def test_runner_prepares_the_processor_s_pixels_and_tokens_bit_for_bit(models, exported, images):
    out_dir = exported("multi")
    runner = _runner(out_dir).OnnxPredictor(out_dir)
    processor = Predictor.from_pretrained(models["multi"]).processor
    ip = processor.image_processor
    for path in images:
        canvas, letterbox = ip.prepare(path)
        pixels, placement = runner.images(path)
        assert np.array_equal(pixels, ip.normalize(canvas[None])[0].numpy()), path
        assert np.array_equal(placement, letterbox.numpy()), path
    texts = [t for _, t in PAIRS] + ["a red cat " * 20]  # the last one is truncated
    want, got = processor(text=texts), runner.encode(texts)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert np.array_equal(got[key], want[key].numpy()), key
    assert got["truncated"].tolist() == [False, False, False, True]


RUNNER_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import vlcoattn_runtime as runtime
spec = json.loads(sys.argv[3])
predictor = runtime.OnnxPredictor(sys.argv[1])
if sys.argv[2] == "vision":
    pairs = [tuple(p) for p in spec]
    results = predictor.predict_batch(pairs, top_k=3) + [predictor.predict(*pairs[0], top_k=3)]
else:
    results = predictor.classify_batch(spec, top_k=3) + [predictor.classify(spec[0], top_k=3)]
print(json.dumps({"results": results, "imported": sorted(m for m in ("torch", "transformers", "vlcoattn")
                                                         if m in sys.modules)}))
"""


def _run_without_torch(out_dir: Path, kind: str, spec: list) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", RUNNER_SCRIPT, str(out_dir), kind, json.dumps(spec)], env=env,
                          cwd=out_dir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _assert_same_scores(got: list[dict], want: list[dict], key: str) -> None:
    assert [g[key] for g in got] == [w[key] for w in want]
    assert [g["probability"] for g in got] == pytest.approx([w["probability"] for w in want], abs=1e-5)


def test_runner_without_torch_answers_and_grounds_as_the_predictor(models, exported, images):
    """Answers (top 3, probabilities), boxes in original pixels, image sizes and truncation equal the torch
    Predictor's for a batch of photos of other sizes, EXIF and exotic files, and for one pair; torch,
    transformers and vlcoattn are never imported."""
    pairs = [(str(sample_photo(p)), t) for p, t in PAIRS] + [(images[2], "the cat"), (images[3], "a red cat " * 20)]
    out = _run_without_torch(exported("multi"), "vision", pairs)
    assert out["imported"] == []
    want = Predictor.from_pretrained(models["multi"]).predict_batch(pairs, top_k=3)
    want.append(want[0])
    for got, ref in zip(out["results"], want, strict=True):
        assert (got["task"], got["image_size"], got["truncated"]) == (ref["task"], ref["image_size"], ref["truncated"])
        _assert_same_scores(got["answers"], ref["answers"], "answer")
        assert got["box"] == pytest.approx(ref["box"], abs=0.011)  # both rounded to 0.01 px


def test_runner_without_torch_classifies_as_the_predictor(models, exported):
    out = _run_without_torch(exported("cls"), "text", TEXTS)
    assert out["imported"] == []
    want = Predictor.from_pretrained(models["cls"]).classify_batch(TEXTS, top_k=3)
    for got, ref in zip(out["results"], [*want, want[0]], strict=True):
        assert (got["label"], got["truncated"]) == (ref["label"], ref["truncated"])
        _assert_same_scores(got["probabilities"], ref["probabilities"], "label")


def test_runner_command_line_and_its_errors(exported, images, capsys):
    out_dir = exported("multi")
    runner = _runner(out_dir)
    assert runner.main([str(out_dir), "--image", images[0], "--text", "what is it?", "--top-k", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["answers"]) == 2 and len(result["box"]) == 4
    assert runner.main([str(out_dir), "--image", str(out_dir / EXPORT_FILE), "--text", "what is it?"]) == 2
    assert "not a usable image" in capsys.readouterr().err
    assert runner.main([str(out_dir), "--text", "no image"]) == 2  # an image-text model cannot classify
    assert "is not a text classifier" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- the CLI


def _cli(*argv) -> int:
    from vlcoattn.cli import export

    with pytest.raises(SystemExit) as info:
        run_cli(export.main, [str(a) for a in argv])
    return info.value.code


def test_cli_writes_the_export_folder(models, tmp_path, capsys):
    assert _cli("--model", models["cls"], "--out", tmp_path / "onnx") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"exported {models['cls']} -> ") and "logits" in out
    names = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert {ONNX_FILE, EXPORT_FILE, RUNTIME_FILE, "tokenizer.json", "tokenizer_config.json"} <= names
    description = json.loads((tmp_path / "onnx" / EXPORT_FILE).read_text())
    assert (description["task"], description["labels"]["id2label"]) == ("cls", {str(k): v for k, v in LABELS.items()})


def test_cli_bad_arguments_are_one_line_and_exit_2(models, tmp_path, capsys, monkeypatch):
    cases = {
        "no --out": (["--model", models["cls"]], "the following arguments are required: --out"),
        "no dir": (["--model", tmp_path / "nope", "--out", tmp_path / "o"], "does not exist"),
        "a causal LM": (["--model", models["lm"], "--out", tmp_path / "o"], "cannot export a CooBertForCausalLM"),
        "out = model": (["--model", models["cls"], "--out", models["cls"]], "is the model dir"),
    }
    for name, (argv, message) in cases.items():
        code = _cli(*argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (name, lines)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxscript" else real(n, *a))
    with pytest.raises(ImportError, match=r"needs onnxscript: pip install 'vlcoattn\[onnx\]'"):
        require_onnx()
    assert _cli("--model", models["cls"], "--out", tmp_path / "o") == 2
    assert capsys.readouterr().err.strip() == "vlcoattn-export: error: ONNX export needs onnxscript: pip install 'vlcoattn[onnx]'"


def test_cli_as_a_subprocess_bad_model_dir_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vlcoattn.cli.export", "--model", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].endswith(  # the prog is the script's name: export.py here
        f": error: model dir {tmp_path / 'nope'} does not exist or is not a directory")
