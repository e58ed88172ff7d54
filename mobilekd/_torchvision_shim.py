"""Make ``import torchvision`` work on a CPU-only torch.

The only torchvision release for torch 2.13.0 (0.28.0) ships a CUDA build whose C++ extension cannot load
against the CPU torch wheel. torchvision then calls ``register_fake("torchvision::nms")`` for an operator that
was never defined and the import fails -- and timm imports torchvision at module load. Declaring the two op
schemas before the first torchvision import lets the fake registration succeed; the ops themselves stay
unavailable (``torchvision.ops.nms`` raises), which mobilekd never needs.

Where torchvision's extension loads normally (matching builds, e.g. a user's CUDA torch) this is a no-op.
See ../shared/notes/toolchain.md section 4.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_LIBRARY = None  # keeps the torch.library fragment alive for the life of the process


def ensure_torchvision_importable() -> bool:
    """Declare torchvision's op schemas if its extension cannot load. Returns True when it had to."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    import torch

    try:  # matching torch/torchvision builds: the real extension loads and registers the ops itself
        torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
        return False
    except (OSError, ImportError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = library
    return True
