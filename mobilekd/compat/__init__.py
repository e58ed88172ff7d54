"""Compatible embeddings: asymmetric retrieval, cross-model compatible ensembles, gallery rejection, upgrades.

Mobile retrieval is asymmetric: the gallery is embedded once, on a server, by big models; queries are embedded
on the phone by the small student. Following Linial et al., "Asymmetric Image Retrieval with Cross Model
Compatible Ensembles" (arXiv 2303.17531, WACV 2024; no official code, see ../shared/notes/methods.md s. 3),
one module per concern, each with its formulas:

* ``gallery``: one model's embeddings of a data split, computed or read from an ``.npz`` (through
  ``mobilekd.data.embeddings_npz.PrecomputedEmbeddings``), matched to the data set by image id.
* ``transform``: the gallery -> query embedding transformations (linear or 2-layer MLP) and their fitting loop.
* ``ensembling``: the ensemble gallery, per-image uncertainty, and the gallery-rejection curve.
* ``workflows``: ``fit``, ``evaluate``, ``upgrade_check`` (BCT-style backward compatibility) and
  ``teacher_check`` (a distilled student's queries against its teacher's gallery).
* ``report``: their Markdown; ``cli``: the command line.

All metrics go through ``mobilekd.metrics.retrieval_metrics`` (the code behind ``benchmarks.recall``).

CLI::

    python -m mobilekd.compat embed MODEL --data DATA [--split all] [--size S] --out FILE.npz
    python -m mobilekd.compat fit --query STUDENT --gallery G1 G2 ... --data DATA [--head linear|mlp] [--out DIR]
    python -m mobilekd.compat evaluate --transforms DIR --data DATA [--reject 0,5,10,20,30] [--out DIR]
    python -m mobilekd.compat upgrade --old A --new B --data DATA [--tolerance 0] [--out DIR]
    python -m mobilekd.compat teacher --student S [S ...] --teacher T --data DATA [--out DIR]

Models are anything ``resolve_teacher`` accepts (names, checkpoint folders, ``.onnx``) or ``.npz`` embedding
files with arrays ``keys`` and ``embeddings`` (``labels`` optional) -- e.g. written by ``compat embed`` -- so
expensive gallery models are embedded once.
"""

from mobilekd.compat.cli import build_parser, main
from mobilekd.compat.ensembling import (DEFAULT_REJECT, ensemble, metrics_with_gallery_subset, rejection_curve,
                                      rejection_order, uncertainty)
from mobilekd.compat.gallery import (EmbeddingSet, check_aligned, embed_model, load_split, read_embedding_file,
                                     select_images, write_embedding_file)
from mobilekd.compat.report import format_evaluation, format_fit, format_teacher, format_upgrade
from mobilekd.compat.transform import (COMPAT_FORMAT, HEADS, EmbeddingTransform, FitConfig, apply_transform,
                                       compat_loss, fit_transform, load_transform, make_transform, save_transform)
from mobilekd.compat.workflows import (MANIFEST, absolute_projection, evaluate, fit, read_manifest, teacher_check,
                                       upgrade_check)
from mobilekd.data.embeddings_npz import check_embeddings

__all__ = [
    "COMPAT_FORMAT", "DEFAULT_REJECT", "HEADS", "MANIFEST", "EmbeddingSet", "EmbeddingTransform", "FitConfig",
    "absolute_projection", "apply_transform", "build_parser", "check_aligned", "check_embeddings", "compat_loss",
    "embed_model", "ensemble", "evaluate", "fit", "fit_transform", "format_evaluation", "format_fit",
    "format_teacher", "format_upgrade", "load_split", "load_transform", "main", "make_transform",
    "metrics_with_gallery_subset", "read_embedding_file", "read_manifest", "rejection_curve", "rejection_order",
    "save_transform", "select_images", "teacher_check", "uncertainty", "upgrade_check", "write_embedding_file",
]
