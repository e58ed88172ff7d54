"""mobilekd.runtime.runners: a new runtime is one registered class, and every consumer of exported files picks it up."""

import numpy as np
import pytest

from mobilekd.runtime.contract import TensorSpec
from mobilekd.runtime.runners import RUNTIMES, Runner, open_runtime, register_runtime


@pytest.fixture
def linear_runtime():
    """A toy runtime defined here, in one class: ``.npy`` files holding a [3*8*8, D] matrix (an NCHW input of
    8 x 8 pixels times the matrix). Unregistered afterwards."""

    @register_runtime("numpy-matmul", (".npy",), "numpy", "pip install numpy")
    class MatmulRunner(Runner):
        def load(self):
            self.weights = np.load(self.path)

        def file_tensors(self):
            return TensorSpec("pixels", [1, 3, 8, 8], "float32"), TensorSpec("embedding", [1, 4], "float32")

        def invoke(self, x):
            return x.reshape(len(x), -1) @ self.weights

    yield MatmulRunner
    RUNTIMES.pop("numpy-matmul")


def test_a_new_runtime_is_one_entry(linear_runtime, tmp_path, folder_dataset):
    from benchmarks.latency import benchmark
    from benchmarks.recall import evaluate

    weights = np.random.default_rng(0).standard_normal((3 * 8 * 8, 4)).astype(np.float32)
    path = tmp_path / "linear.npy"
    np.save(path, weights)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)

    runner = open_runtime(path, threads=1)  # no model.json: a contract from the file's own tensors
    assert runner.name == "numpy-matmul" and runner.fixed_batch == 1 and runner.input_hw == (8, 8)
    assert runner.contract.input.layout == "NCHW" and runner.contract.preprocess.size == 8
    expected = x.reshape(3, -1) @ weights
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)  # no l2_normalized in the contract: renormalised
    np.testing.assert_allclose(runner(x), expected, rtol=1e-5)  # batch of 3 looped over the batch-1 file

    timed = benchmark([str(path)], [1], runs=2, warmup=1, compile=False, peak_repeats=1, progress=False)
    assert [r["runtime"] for r in timed["results"]] == ["numpy-matmul"] and not timed["errors"]
    recall = evaluate([str(path)], str(folder_dataset), progress=False, threads=1)
    assert not recall["errors"] and recall["results"][0]["runtime"] == "numpy-matmul"
    assert recall["results"][0]["embed_dim"] == 4


def test_an_unavailable_runtime_says_how_to_install_it(tmp_path):
    from mobilekd.runtime.runners import NotRunnable, get_runtime

    coreml = get_runtime("coreml")
    reason = coreml.why_unavailable()
    if reason is None:
        pytest.skip("Core ML runs here")
    with pytest.raises(NotRunnable, match="macOS|coremltools"):
        coreml.open(tmp_path / "model.mlpackage")
