"""Weight selection: initialise a small network from a larger pretrained one of the same family.

Xu, Z., Chen, Y., Vishniakov, K., Yin, Y., Shen, Z., Darrell, T., Liu, L., Liu, Z. "Initializing Models with
Larger Ones", ICLR 2024. For every parameter (and buffer) ``w_s`` of the small network take the same-named
tensor ``W`` of the large one (same rank) and keep evenly spaced elements along every dimension:

    w_s = W[idx(L_1, l_1), idx(L_2, l_2), ...]      (one index list per dimension, applied in turn)

    idx(L, l) = [0, k, 2k, ..., (l-1)k]  with k = L // l      if l divides L  (the authors' code, exactly)
    idx(L, l) = round(linspace(0, L - 1, l))                  otherwise

where ``L`` is the large and ``l`` the small size of that dimension. The authors' code uses
``round(linspace(0, L, l))`` in the second case, which can index ``L`` (one past the end); ``L - 1`` keeps the
same evenly spaced rule inside the tensor. ``idx`` depends on ``(L, l)`` only, so every dimension of the same
pair of sizes keeps the same channels: a residual sum, a depthwise convolution and the BatchNorm after a
convolution all see the channels their inputs kept. BatchNorm running mean / variance are selected like the
weights; ``num_batches_tracked`` (a scalar) is copied. Depth: a small network whose blocks are a prefix of the
large one's (fewer blocks per stage, same names) takes the first blocks of each stage, the paper's
"first-N layer selection".

``select_weights`` works on any pair of timm state dicts of one family; ``initialise_from`` applies it to a
student's backbone from a name, a mobilekd checkpoint or a ``.safetensors`` / ``.pth`` state dict
(``--init-from`` on distill/train). The embedding head stays freshly initialised. As a command it writes the
selected student as a checkpoint, e.g. to measure its zero-shot features or to start several runs from it:

    python -m mobilekd.weight_selection --student efficientnet_lite_025 --init-from efficientnet_lite0 \
        --embed-dim 0 --size 128 --out runs/lite025-selected
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save

from mobilekd.errors import ModelError, cli_entry
from mobilekd.io import sha256_file
from mobilekd.models.checkpoint import is_checkpoint, load_model, save_model
from mobilekd.models.pretrained import SHIPPED_WEIGHTS
from mobilekd.models.registry import build_backbone
from mobilekd.models.resolve import resolve_model
from mobilekd.models.state_dicts import read_state_dict

RULE = "uniform (Xu et al. 2024): step L//l when l divides L, else round(linspace(0, L-1, l))"


def selection_indices(large: int, small: int) -> torch.Tensor:
    """The ``small`` evenly spaced indices into a dimension of size ``large`` (see the module docstring)."""
    if small > large:
        raise ValueError(f"cannot select {small} of {large} elements")
    if large % small == 0:
        return torch.arange(small) * (large // small)
    return torch.round(torch.linspace(0, large - 1, small)).long()


def select_tensor(large: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``large`` reduced to ``shape`` by keeping evenly spaced elements along every dimension."""
    out = large
    for dim, size in enumerate(shape):
        if out.shape[dim] != size:
            out = out.index_select(dim, selection_indices(out.shape[dim], size))
    return out


def select_weights(large_state: dict[str, torch.Tensor],
                   small_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict shaped like ``small_state`` whose every tensor is selected from ``large_state``'s same-named
    one. Extra tensors of the large network (a classifier, deeper blocks) are ignored. Raises ``ModelError``
    naming the first small tensor with no counterpart, another rank, or a dimension larger than the large one."""
    selected = {}
    for name, small in small_state.items():
        if name not in large_state:
            raise ModelError(f"weight selection: {name} {tuple(small.shape)} has no counterpart in the larger "
                             "model: it is not of the student's family (the parameter names must correspond)")
        large = large_state[name]
        if large.dim() != small.dim() or any(s > b for s, b in zip(small.shape, large.shape)):
            raise ModelError(f"weight selection: {name} {tuple(small.shape)} does not correspond to the larger "
                             f"model's {tuple(large.shape)}: it is not of the student's family")
        selected[name] = select_tensor(large, tuple(small.shape)).to(small.dtype).contiguous().clone()
    return selected


# ------------------------------------------------------------------------------------------ --init-from


# the dicts a torch.save checkpoint may wrap its state dict in (timm/DeiT/EMA training scripts), first found wins
WRAPPERS = ("state_dict", "model", "state_dict_ema")


def _state_file(path: Path) -> dict[str, torch.Tensor]:
    """A timm-style backbone state dict from ``.safetensors`` or a ``torch.save`` file (``WRAPPERS`` unwrapped;
    an EmbeddingNet's ``backbone.`` prefix removed)."""
    try:
        state, _ = read_state_dict(path, unwrap=WRAPPERS)
    except ModelError as error:
        raise ModelError(f"--init-from {error}") from None
    if any(k.startswith("backbone.") for k in state):  # a mobilekd EmbeddingNet saved without model.json
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_source(source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The larger network's backbone state dict and a sha256 identifying it.

    ``source``: a mobilekd checkpoint (folder or ``.safetensors`` with its ``.json``; sha256 of its weights
    file), a ``.safetensors`` / ``.pth`` / ``.pt`` state dict (sha256 of the file), or a model name with offline
    weights such as ``efficientnet_lite0`` (sha256 of the state dict serialised as safetensors).
    """
    path = Path(source)
    if path.exists():
        if is_checkpoint(path):
            weights = path / "model.safetensors" if path.is_dir() else path
            return load_model(path).backbone.state_dict(), sha256_file(weights)
        if path.is_file() and path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
            return _state_file(path), sha256_file(path)
        raise ModelError(f"--init-from {source}: not a mobilekd checkpoint folder nor a .safetensors/.pth state dict")
    if any(sep in source for sep in ("/", "\\")) or path.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        raise ModelError(f"--init-from {source}: no such file or folder")
    state = build_backbone(source, pretrained=True).state_dict()
    return state, hashlib.sha256(save({k: v.contiguous() for k, v in state.items()})).hexdigest()


def source_bn_folded(source: str) -> bool:
    """Whether ``source``'s BatchNorms are folded into its convolutions (imported TF weights, the shipped
    ImageNet students): each BN is then the identity plus a bias, and so is every BN selected from it."""
    import json

    path = Path(source)
    if path.exists() and is_checkpoint(path):
        meta = path / "model.json" if path.is_dir() else path.with_suffix(".json")
        try:
            return bool(json.loads(meta.read_text()).get("spec", {}).get("bn_folded"))
        except (OSError, ValueError, AttributeError):
            return False  # load_source has already named what is wrong with the file
    if path.is_file() and path.suffix == ".safetensors":  # mobilekd.weights.save_backbone records it in the header
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get("bn_folded") == "true"
    return not path.exists() and source in SHIPPED_WEIGHTS


def initialise_from(model, source: str) -> dict:
    """Weight-select ``model.backbone`` (an ``EmbeddingNet``) from ``source`` in place; the head is untouched.

    Everything is checked before the model changes, so a bad source leaves it as it was. A folded-BN source
    gives a folded-BN student (``spec.bn_folded``), which training unfolds from data before its first step
    (``mobilekd.weights.bn_unfold``): train-mode BN on identity statistics would destroy the selected features. Returns
    the record kept in the run's ``model.json``: source, its sha256, the selection rule (and ``bn_folded``)."""
    large, digest = load_source(source)
    try:
        selected = select_weights(large, model.backbone.state_dict())
    except ModelError as error:
        raise ModelError(f"--init-from {source}: {error}") from None
    model.backbone.load_state_dict(selected, strict=True)
    record = {"source": source, "sha256": digest, "rule": RULE}
    if source_bn_folded(source):
        model.spec.bn_folded = True
        record["bn_folded"] = True
    return record


@cli_entry
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mobilekd.weight_selection",
                                     description="Write a student checkpoint whose backbone is weight-selected "
                                                 "from a larger model of its family (Xu et al. 2024).")
    parser.add_argument("--student", required=True, help="student name, e.g. efficientnet_lite_025")
    parser.add_argument("--init-from", required=True,
                        help="larger model: name, checkpoint folder or .safetensors/.pth ('none': random init, "
                             "the baseline)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--embed-dim", type=int, default=128, help="embedding head size (0: the pooled features)")
    parser.add_argument("--size", type=int, help="input size (default: the student's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (head, and 'none')")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = resolve_model(args.student, embed_dim=args.embed_dim, size=args.size)
    record = None if args.init_from.lower() == "none" else initialise_from(model, args.init_from)
    save_model(model, args.out, {"init_from": record, "seed": args.seed})
    print(f"{args.out}: {args.student} " + (f"weight-selected from {args.init_from}" if record else "random init"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
