"""Black-box teachers, known only by their embeddings: an ``.npz`` of precomputed embeddings looked up by image key
(``mobilekd.data.embeddings_npz``), or an exported file run through the runtime layer
(``mobilekd.runtime.file_embedder``) -- and the one validation of such embeddings."""

import json

import numpy as np
import pytest
import torch

from mobilekd.data.embeddings_npz import PrecomputedEmbeddings, check_embeddings, check_keyed_embeddings
from mobilekd.runtime.file_embedder import FileEmbedder
from mobilekd.errors import MobileKDError, ModelError
from mobilekd.preprocess import IMAGENET_MEAN, TF_LITE_MEAN, TF_LITE_STD, Preprocess

KEYS = np.array(["Albatross/0001.jpg", "Albatross/0002.jpg", "Wren/0003.jpg"])
RAW = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0], [1.0, 1.0, 1.0]])


# ------------------------------------------------------------------------------------------ validation


def test_check_embeddings_normalises_rows_without_touching_the_input():
    raw = RAW.copy()
    out = check_embeddings(raw)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.shape == (3, 3)
    np.testing.assert_allclose(out[0], [0.6, 0.8, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 0.0, -1.0])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(raw, RAW)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(3), r"teacher: embeddings must be a non-empty \[N, D\] array, got shape \(3,\)"),
    (np.zeros((0, 4)), r"got shape \(0, 4\)"),
    (np.zeros((2, 0)), r"got shape \(2, 0\)"),
    (np.array([[1.0, 0.0], [1.0, np.nan], [np.inf, 0.0]]), r"2 embedding\(s\) contain NaN or infinite values "
                                                          r"\(first at row 1\)"),
    (np.array([[1.0, 0.0], [0.0, 0.0]]), r"1 embedding\(s\) are all zeros \(first at row 1\)"),
])
def test_check_embeddings_refuses_what_has_no_direction(bad, message):
    with pytest.raises(ModelError, match=message):
        check_embeddings(bad, "teacher")


def test_keyed_embeddings_need_one_unique_key_per_row():
    keys, embeddings = check_keyed_embeddings(np.array([1, 2]), np.eye(2), "f")
    assert keys == ["1", "2"] and embeddings.dtype == np.float32
    with pytest.raises(ModelError, match=r"f: 3 embeddings but 2 keys"):
        check_keyed_embeddings(["a", "b"], RAW, "f")
    with pytest.raises(ModelError, match=r"f: image id 'b' occurs more than once"):
        check_keyed_embeddings(["a", "b", "b"], RAW, "f")


# ------------------------------------------------------------------------------------------ .npz teacher


def test_precomputed_embeddings_look_up_unit_rows_by_key(tmp_path):
    path = tmp_path / "teacher.npz"
    np.savez(path, keys=KEYS, embeddings=RAW.astype(np.float64), labels=np.array([0, 0, 1]))
    teacher = PrecomputedEmbeddings(path)
    assert teacher.keys == KEYS.tolist() and teacher.embed_dim == 3 and teacher.preprocess is None
    assert teacher.labels.tolist() == [0, 0, 1]
    assert teacher.embeddings.dtype == torch.float32
    got = teacher.lookup(["Wren/0003.jpg", "Albatross/0001.jpg", "Wren/0003.jpg"])  # any order, repeats
    expected = torch.tensor([[1.0, 1.0, 1.0], [3.0, 4.0, 0.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(got, expected / expected.norm(dim=1, keepdim=True))
    with pytest.raises(ModelError, match=r"no embedding for image 'Wren/9\.jpg' \(2 missing\)"):
        teacher.lookup(["Albatross/0002.jpg", "Wren/9.jpg", "x"])


def test_a_single_image_file_and_one_without_labels(tmp_path):
    np.savez(tmp_path / "one.npz", keys=np.array("only.png"), embeddings=np.array([[0.0, 5.0]]))  # 0-d keys
    teacher = PrecomputedEmbeddings(tmp_path / "one.npz")
    assert teacher.keys == ["only.png"] and teacher.labels is None
    torch.testing.assert_close(teacher.lookup(["only.png"]), torch.tensor([[0.0, 1.0]]))


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.npz", r"embeddings file not found: .*missing\.npz"),
    (lambda d: _write(d / "k.npz", keys=KEYS), r"expected an \.npz with arrays 'keys' and 'embeddings' \(found keys\)"),
    (lambda d: _write(d / "e.npz", vectors=RAW), r"\(found vectors\)"),
    (lambda d: (d / "text.npz").write_text("not a zip") and d / "text.npz", r"text\.npz: not a readable \.npz"),
    (lambda d: _write(d / "obj.npz", keys=np.array([{"a": 1}, {"b": 2}, {"c": 3}], dtype=object), embeddings=RAW),
     r"obj\.npz: not a readable \.npz"),  # pickled objects are never loaded
    (lambda d: _write(d / "short.npz", keys=KEYS[:2], embeddings=RAW), r"3 embeddings but 2 keys"),
    (lambda d: _write(d / "nan.npz", keys=KEYS, embeddings=np.where(np.eye(3) > 0, np.nan, RAW)),
     r"nan\.npz: 3 embedding\(s\) contain NaN"),
])
def test_unusable_npz_files_are_one_model_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ModelError, match=message) as error:
        PrecomputedEmbeddings(path)
    assert isinstance(error.value, MobileKDError) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ exported-file teacher


class _TinyEmbedder(torch.nn.Module):
    """A conv and a pooled linear map: un-normalised [N, 4] outputs, so the runner's renormalisation shows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
        self.fc = torch.nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3))) + 3.0


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    model = _TinyEmbedder().eval()
    path = tmp_path_factory.mktemp("blackbox") / "teacher.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 20, 20),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["embedding"], dynamic_axes={"input": {0: "n"}})
    return model, path


def test_file_embedder_runs_the_file_and_returns_unit_vectors(tiny_onnx):
    model, path = tiny_onnx
    teacher = FileEmbedder(path, threads=1)
    assert teacher.eval() is teacher and teacher.embed_dim == 4
    # no model.json, no <file>.json: the file's own input size with ImageNet mean/std
    assert teacher.preprocess == Preprocess(20) and teacher.preprocess.mean == IMAGENET_MEAN
    x = torch.randn(5, 3, 20, 20)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(x), dim=1)
    got = teacher(x)
    assert got.shape == (5, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_file_embedder_takes_its_preprocessing_from_the_json_beside_it(tiny_onnx, tmp_path):
    """README "Teachers": a black-box teacher's preprocessing comes from its model.json contract, else from the
    ``<file>.json`` beside it (key ``preprocess``); a bad one is one clear error."""
    _, source = tiny_onnx
    path = tmp_path / "teacher.onnx"
    path.write_bytes(source.read_bytes())
    sidecar = Preprocess(20, TF_LITE_MEAN, TF_LITE_STD, crop=0.875)
    path.with_suffix(".json").write_text(json.dumps({"preprocess": sidecar.to_dict()}))
    assert FileEmbedder(path).preprocess == sidecar
    path.with_suffix(".json").write_text(json.dumps({"preprocess": {"size": 20, "crop": 1.5}}))
    with pytest.raises(ModelError, match=r"teacher\.json: bad preprocess \(preprocess\.crop must be in \(0, 1\], got 1\.5"):
        FileEmbedder(path)


def test_file_embedder_refuses_what_no_runtime_opens(tmp_path):
    (tmp_path / "teacher.pt").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"teacher\.pt: no runtime opens \.pt files"):
        FileEmbedder(tmp_path / "teacher.pt")
