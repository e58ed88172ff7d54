"""android_demo/core (pure Kotlin/JVM) against Python: golden vectors and the model.json schema.

Python writes real images (scikit-image sample photos as PNG, various sizes and aspect ratios), their model
inputs as ``mobilekd.data.views.render_evaluation(image, preprocess)`` (the evaluation view) computes them, the
embeddings of a tiny model and faiss top-k results; ``android_demo/core/run-tests.sh`` then compiles ``core``
with kotlinc and runs its JUnit tests on that folder (MOBILEKD_GOLDEN): the Kotlin preprocessing must
reproduce the float32 tensors bit for bit (int8 inputs: within one quantisation step), its index must return
faiss's top-k, and its reader must accept these model.json files. ``write_android_golden`` does the same for
the android/ folder ``export.android`` writes (MOBILEKD_ANDROID: model.json + model sha256, int8 and fp16
galleries, Python's top-k, the shipped photos' inputs), read by AndroidFolderTest.kt as the app reads its assets.

The JVM tests need a JDK (skipped without ``java``); the Kotlin compiler comes from npm and JUnit from Debian's
junit4 (run-tests.sh installs both; a failed install fails the test). Compiling takes over a minute in a clean
clone, so they run with ``pytest -m slow``; the default run compares the reader's field lists, read from its
Kotlin source, with mobilekd/runtime/contract.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "android_demo" / "core"
RUN_TESTS = CORE / "run-tests.sh"

needs_jdk = pytest.mark.skipif(shutil.which("java") is None, reason="no JDK (java) on PATH: the Kotlin core cannot run")
CONTRACT_KT = CORE / "src" / "main" / "kotlin" / "com" / "mobilekd" / "core" / "ModelContract.kt"


# ------------------------------------------------------------------------------------------ golden data


def _sample_images() -> dict[str, Image.Image]:
    """Real photos of different sizes, aspect ratios and PNG colour types (RGB, grey, RGBA)."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    return {
        "coffee_600x400": Image.fromarray(data.coffee()),                      # landscape
        "chelsea_451x300": Image.fromarray(data.chelsea()),                    # odd width
        "rocket_427x640": Image.fromarray(data.rocket()).transpose(Image.TRANSPOSE),  # portrait
        "astronaut_strip_512x97": astronaut.crop((0, 200, 512, 297)),           # extreme aspect
        "astronaut_tiny_21x17": astronaut.crop((200, 80, 221, 97)),             # smaller than the input: upsampling
        "camera_grey_512x512": Image.fromarray(data.camera()),                  # mode L
        "logo_rgba_500x500": Image.fromarray(data.logo()),                      # mode RGBA
        "colorwheel_371x370": Image.fromarray(data.colorwheel()),
        "hubble_1000x872": Image.fromarray(data.hubble_deep_field()),
    }


def _contracts(model):
    from mobilekd.runtime.contract import ModelContract, TensorSpec
    from mobilekd.preprocess import TF_LITE_MEAN, TF_LITE_STD, Preprocess

    sha = "0" * 64
    source = {"checkpoint": "golden", "arch": "mobilenetv1_025", "sha256": sha}
    pre_a = model.spec.preprocess
    a = ModelContract("model.tflite", "tflite", "fp32",
                      TensorSpec("input", [1, 3, pre_a.size, pre_a.size], "float32", layout="NCHW"),
                      TensorSpec("embedding", [1, 16], "float32", l2_normalized=True),
                      pre_a, 16, source, parity={"passed": True, "cosine_min": 1.0})
    pre_b = Preprocess(size=24, mean=TF_LITE_MEAN, std=TF_LITE_STD, crop=0.875)
    b = ModelContract("model.tflite", "tflite", "int8",
                      TensorSpec("input", [1, 24, 24, 3], "int8", layout="NHWC",
                                 quantization={"scale": 0.0078125, "zero_point": -1}),
                      TensorSpec("embedding", [1, 16], "int8", quantization={"scale": 1 / 128, "zero_point": 0},
                                 l2_normalized=False),
                      pre_b, 16, source)
    pre_c = Preprocess(size=40, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop=0.6)
    c = ModelContract("model.onnx", "onnx", "fp32",
                      TensorSpec("pixels", [1, 40, 40, 3], "uint8", layout="NHWC",
                                 quantization={"scale": 1.0, "zero_point": 0}),
                      TensorSpec("embedding", [1, 16], "float32", l2_normalized=False),
                      pre_c, 16, source)
    return {"a": a, "b": b, "c": c}


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    return np.clip(np.round(x.astype(np.float64) / scale) + zero_point, lo, hi).astype(dtype)


def _topk(gallery: np.ndarray, queries: np.ndarray, k: int):
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ids.tolist(), scores.tolist()


def write_golden(out: Path) -> dict:
    import torch

    from mobilekd.data.views import ViewSampler, render, render_evaluation
    from mobilekd.models import create_model

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("mobilenetv1_025", embed_dim=16, size=32).eval()
    contracts = _contracts(model)
    for name, contract in contracts.items():
        (out / f"contract_{name}.json").write_text(json.dumps(contract.to_dict(), indent=2))
    (out / "model.json").write_text(json.dumps(contracts["b"].to_dict(), indent=2))  # what export.tflite --quantize int8 --integer-io ships

    cases = []
    images = {}
    for stem, image in _sample_images().items():
        file = f"{stem}.png"
        image.save(out / file)
        images[stem] = Image.open(out / file).convert("RGB")  # as mobilekd's datasets load images
        for cname, contract in contracts.items():
            pre = contract.preprocess
            img = images[stem]
            chw = render_evaluation(img, pre).numpy()
            tensor = chw if contract.input.layout == "NCHW" else chw.transpose(1, 2, 0)
            case = {"image": file, "contract": cname, "width": img.width, "height": img.height,
                    "tensor": f"{stem}__{cname}.f32"}
            tensor.astype("<f4").tofile(out / case["tensor"])
            if contract.input.quantization:
                q = contract.input.quantization
                case["quantized"] = f"{stem}__{cname}.q"
                _quantize(tensor, q["scale"], q["zero_point"], contract.input.dtype).tofile(out / case["quantized"])
            cases.append(case)

    # embeddings of the tiny model: each image's evaluation view plus two random-resized-crop views
    pre = contracts["a"].preprocess
    sampler = ViewSampler(seed=0)
    ids, batch = [], []
    for i, (stem, img) in enumerate(images.items()):
        for view_id in range(3):
            batch.append(render(img, sampler(img.width, img.height, i, view_id), pre))
            ids.append(f"{stem}#{view_id}")
    batch = torch.stack(batch)
    # A freshly initialised net maps every image to nearly the same direction (cosine > 0.999, so top-k is
    # decided by float rounding). Calibrating its BatchNorm statistics on these images, as training would,
    # spreads the embeddings out (no near-ties in the top-k) without training anything.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(batch)
    model.eval()
    with torch.no_grad():
        emb = model(batch).numpy().astype(np.float32)
    rng = np.random.default_rng(0)
    raw = emb * rng.uniform(0.5, 20.0, size=(len(emb), 1)).astype(np.float32)  # un-normalised model outputs
    emb.astype("<f4").tofile(out / "embeddings.f32")
    raw.astype("<f4").tofile(out / "raw.f32")
    k = 5
    top_ids, top_scores = _topk(emb, emb, k)

    # an int8 output (contract b): quantised embeddings, dequantised + normalised by the consumer
    qo = contracts["b"].output.quantization
    q_emb = _quantize(emb, qo["scale"], qo["zero_point"], "int8")
    q_emb.tofile(out / "embeddings.i8")
    deq = (qo["scale"] * (q_emb.astype(np.float64) - qo["zero_point"]))
    deq = (deq / np.linalg.norm(deq, axis=1, keepdims=True)).astype(np.float32)
    q_ids, q_scores = _topk(deq, deq, k)

    # a larger random set, where near-ties are rare
    big = rng.standard_normal((300, 16)).astype(np.float32)
    big /= np.linalg.norm(big, axis=1, keepdims=True)
    big.astype("<f4").tofile(out / "random.f32")
    r_ids, r_scores = _topk(big, big[:50], 10)

    manifest = {
        "contracts": {name: f"contract_{name}.json" for name in contracts},
        "cases": cases,
        "embeddings": {"file": "embeddings.f32", "raw": "raw.f32", "n": len(ids), "dim": 16, "ids": ids,
                       "k": k, "topk": top_ids, "scores": top_scores},
        "quantized_output": {"file": "embeddings.i8", "contract": "b", "topk": q_ids, "scores": q_scores},
        "random": {"file": "random.f32", "n": 300, "dim": 16, "queries": 50, "k": 10,
                   "topk": r_ids, "scores": r_scores},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ------------------------------------------------------------------------------------------ tests


def _run(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN_TESTS), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@needs_jdk
@pytest.mark.slow  # compiles the Kotlin core (first run in a clean clone: npm kotlinc install + compile, ~70-80 s)
def test_jvm_core_reproduces_python_golden_vectors(tmp_path):
    golden = tmp_path / "golden"
    manifest = write_golden(golden)
    proc = _run(env={"MOBILEKD_GOLDEN": str(golden)})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"android_demo/core/run-tests.sh failed (rc {proc.returncode}):\n{output[-8000:]}"
    # the golden tests ran (they are skipped, not failed, without MOBILEKD_GOLDEN)
    assert f"GOLDEN preprocess: {len(manifest['cases'])} cases bit-exact" in output, output[-4000:]
    assert "GOLDEN topk: faiss top-k reproduced" in output, output[-4000:]
    assert "GOLDEN contract: 3 model.json files parsed" in output, output[-4000:]


def kotlin_contract_fields() -> dict:
    """What ``run-tests.sh fields`` prints (``ContractFields.asMap()``), read from ModelContract.kt itself: the
    ``const val`` / ``val X = listOf(...)`` declarations of ``object ContractFields`` and the keys asMap gives
    them. The reader validates with these same constants (``requireKeys(ContractFields.TOP_REQUIRED, ...)``)."""
    import re

    source = CONTRACT_KT.read_text()
    body = re.search(r"object ContractFields \{(.*?)\n\}", source, re.S)
    assert body, f"no object ContractFields in {CONTRACT_KT}"
    body = body.group(1)
    values = {name: value for name, value in re.findall(r'const val (\w+) = "([^"]*)"', body)}
    for name, items in re.findall(r"val (\w+) = listOf\(([^)]*)\)", body):
        values[name] = re.findall(r'"([^"]*)"', items)
    as_map = re.search(r"fun asMap\(\).*?linkedMapOf\((.*?)\)", body, re.S)
    assert as_map, "no ContractFields.asMap()"
    pairs = re.findall(r'"(\w+)" to (\w+)', as_map.group(1))
    assert len(pairs) == 12, pairs
    return {key: values[name] for key, name in pairs}


def assert_fields_match_python(kotlin: dict) -> None:
    """The Kotlin reader's field names and allowed values are mobilekd/runtime/contract.py's, and what the Python writer
    emits is exactly what the Kotlin reader requires."""
    import torch

    from mobilekd.runtime import contract as C
    from mobilekd.models import create_model
    from mobilekd.preprocess import Preprocess

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    assert kotlin["format"] == C.FORMAT
    assert set(kotlin["top_required"]) | set(kotlin["top_optional"]) == names(C.ModelContract)
    assert set(kotlin["top_optional"]) == {f.name for f in dataclasses.fields(C.ModelContract)
                                           if f.default is not dataclasses.MISSING
                                           or f.default_factory is not dataclasses.MISSING} - {"format"}
    assert set(kotlin["tensor_fields"]) == names(C.TensorSpec)
    assert set(kotlin["preprocess_fields"]) == names(Preprocess)
    assert set(kotlin["quantization_fields"]) == {"scale", "zero_point"}
    for key, values in (("runtimes", C.RUNTIMES), ("precisions", C.PRECISIONS), ("layouts", C.LAYOUTS),
                        ("dtypes", C.DTYPES)):
        assert set(kotlin[key]) == set(values), key

    torch.manual_seed(0)
    written = _contracts(create_model("mobilenetv1_025", embed_dim=16, size=32))["b"].to_dict()
    assert set(written) - {"parity"} == set(kotlin["top_required"]) | {"source"}
    assert set(written["input"]) == set(kotlin["input_required"])
    assert set(written["output"]) == set(kotlin["output_required"])
    assert set(written["preprocess"]) == set(kotlin["preprocess_fields"])
    assert set(written["input"]["quantization"]) == set(kotlin["quantization_fields"])


def test_kotlin_reader_fields_match_export_contract():
    """A model.json field added or renamed on one side only fails the default run (no JVM needed)."""
    assert_fields_match_python(kotlin_contract_fields())


@needs_jdk
@pytest.mark.slow  # compiles the Kotlin core; the default run checks the same lists read from the source
def test_compiled_kotlin_reader_prints_the_fields_its_source_declares():
    proc = _run("fields")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kotlin = json.loads(proc.stdout.strip().splitlines()[-1])
    assert kotlin == kotlin_contract_fields()
    assert_fields_match_python(kotlin)


# ------------------------------------------------------------------------------------------ the android/ folder


def write_android_golden(out: Path, model_dir: Path) -> dict:
    """``out/int8`` and ``out/fp16``: android/ folders written by ``export.android`` for the export ``model_dir``
    with a gallery of real photos (PNG, so that the JVM decodes the same pixels), plus what Python reads from them:
    the dequantised rows, top-k of random queries, and each photo's model input as ``render_evaluation`` makes it
    from the shipped model.json. ``manifest.json`` lists them for AndroidFolderTest.kt (MOBILEKD_ANDROID)."""
    from export.android import read_gallery, search_gallery, write_android_folder
    from mobilekd.data.views import render_evaluation
    from mobilekd.runtime.contract import ModelContract

    photos = out / "photos"
    photos.mkdir(parents=True)
    for stem, image in list(_sample_images().items())[:6]:
        image.save(photos / f"{stem}.png")
    rng = np.random.default_rng(0)
    folders = []
    for precision in ("int8", "fp16"):
        dest = out / precision
        write_android_folder(model_dir, dest, gallery=photos, gallery_precision=precision, progress=False)
        contract = ModelContract.from_dict(json.loads((dest / "model.json").read_text()))
        gallery = read_gallery(dest / "gallery", contract.model_sha256, contract.embed_dim)
        gallery["vectors"].astype("<f4").tofile(out / f"{precision}.vectors.f32")
        queries = rng.standard_normal((20, contract.embed_dim)).astype(np.float32) * 3
        queries = np.concatenate([queries, gallery["vectors"]]).astype("<f4")  # and each row's own nearest
        queries.tofile(out / f"{precision}.queries.f32")
        topk, scores = search_gallery(gallery["vectors"], queries, k=4)
        inputs = []
        for i, name in enumerate(gallery["ids"]):
            with Image.open(photos / name) as image:
                chw = render_evaluation(image.convert("RGB"), contract.preprocess).numpy()
            tensor = chw if contract.input.layout == "NCHW" else chw.transpose(1, 2, 0)
            tensor.astype("<f4").tofile(out / f"{precision}.input{i}.f32")
            inputs.append({"image": f"photos/{name}", "tensor": f"{precision}.input{i}.f32"})
        folders.append({"dir": precision, "precision": precision, "ids": gallery["ids"],
                        "vectors": f"{precision}.vectors.f32", "queries": f"{precision}.queries.f32",
                        "topk": topk, "scores": scores, "inputs": inputs})
    manifest = {"folders": folders}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


@needs_jdk
@pytest.mark.slow  # compiles the Kotlin core (see above) and converts the tiny student to TFLite
def test_jvm_core_reads_the_android_folder_export_android_writes(tmp_path, exported):
    """The whole hand-over: ``export.android`` -> the folder the app copies into its assets -> the Kotlin core
    reads model.json, checks the model's sha256, loads the int8 and fp16 galleries and finds Python's top-k."""
    manifest = write_android_golden(tmp_path / "android", exported("tflite"))
    proc = _run(env={"MOBILEKD_ANDROID": str(tmp_path / "android")})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"android_demo/core/run-tests.sh failed (rc {proc.returncode}):\n{output[-8000:]}"
    assert f"GOLDEN android: {len(manifest['folders'])} folders (int8, fp16) loaded, top-k reproduced" in output, \
        output[-4000:]
