"""Running exported model files, below both training and export.

* ``contract``: the ``model.json`` beside an exported file (how to feed it, what it returns);
* ``normalization``: input normalisation folded into an exported graph, and converting between two of them;
* ``runners``: the registry of runtimes (onnxruntime, LiteRT, Core ML) that run ``.onnx`` / ``.tflite`` /
  ``.mlpackage`` files;
* ``file_embedder``: such a file used as a black-box teacher (``FileEmbedder``).

``mobilekd`` (black-box teachers), ``export`` (parity) and ``benchmarks`` all run files through it.
"""
