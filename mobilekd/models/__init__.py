"""Models: the name registry, pretrained weights, the embedding network, checkpoints and state-dict files.

``resolve`` (what the user typed -> a model or teacher) is imported from ``mobilekd.models.resolve``.
"""

from mobilekd.models.checkpoint import CHECKPOINT_FORMAT, is_checkpoint, load_model, save_model
from mobilekd.models.embedding_net import (EmbeddingNet, ModelSpec, check_input_size, create_model,
                                           minimum_input_size, parse_layer_pairs)
from mobilekd.models.pretrained import ASSETS, PRETRAINED_ARCH, SHIPPED_WEIGHTS, load_shipped_weights
from mobilekd.models.registry import STUDENTS, TEACHERS, build_backbone, default_preprocess, unknown_model_message
from mobilekd.models.state_dicts import load_checked, read_state_dict

__all__ = ["ASSETS", "CHECKPOINT_FORMAT", "PRETRAINED_ARCH", "SHIPPED_WEIGHTS", "STUDENTS", "TEACHERS",
           "EmbeddingNet", "ModelSpec", "build_backbone", "check_input_size", "create_model", "default_preprocess",
           "is_checkpoint", "load_checked", "load_model", "load_shipped_weights", "minimum_input_size",
           "parse_layer_pairs", "read_state_dict", "save_model", "unknown_model_message"]
