"""Real ImageNet weights for students: ``.tflite`` import and its self-check, state-dict files, weight selection
from a larger model of the family, and BatchNorm unfolding before training.

``python -m mobilekd.weights import FILE.tflite --arch ARCH --out DIR`` (``mobilekd.weights.cli``). The
teachers' ImageNet weights come with the model registry (``mobilekd.models.pretrained``).
"""

from mobilekd.weights.cli import main
from mobilekd.weights.from_file import import_tflite, save_backbone, student_with_weights, tf_arch

__all__ = ["import_tflite", "main", "save_backbone", "student_with_weights", "tf_arch"]
