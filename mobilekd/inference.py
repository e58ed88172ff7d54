"""Embed an image set with any model: an EmbeddingNet, a black-box file embedder, or precomputed embeddings."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mobilekd.data.embeddings_npz import PrecomputedEmbeddings
from mobilekd.data.image_sets import ImageSet
from mobilekd.data.view_dataset import ViewDataset


@torch.inference_mode()
def embed_views(model, dataset: ViewDataset, keys: list, input_name: str, device: str = "cpu",
                batch_size: int = 64, desc: str = "embed", progress: bool = True, num_workers: int = 0) -> torch.Tensor:
    """Embeddings of the given ``(index, view)`` keys, rendered for ``input_name``, in key order."""
    if isinstance(model, torch.nn.Module):
        was_training = model.training
        model.eval()
    batches = DataLoader(torch.utils.data.Subset(dataset, keys), batch_size=batch_size,
                         num_workers=num_workers)
    out = []
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        pixels = batch[input_name].to(device, non_blocking=True)
        out.append(model(pixels).float().cpu())
    if isinstance(model, torch.nn.Module) and was_training:
        model.train()
    return torch.cat(out) if out else torch.empty(0)


def embed_image_set(model, images: ImageSet, device: str = "cpu", batch_size: int = 64, progress: bool = True,
                    preload_side: int = 0, desc: str | None = None,
                    decoded: ViewDataset | None = None) -> np.ndarray:
    """Embeddings of every image's evaluation view (``mobilekd.data.views.evaluation_view`` of the model's own
    preprocess: the view export parity and the phone use), float32 [N, D]. ``decoded``: a ViewDataset of
    ``images`` whose decoded-image cache is reused (repeated evaluations decode the images once)."""
    if isinstance(model, PrecomputedEmbeddings):
        return model.lookup(images.keys).numpy()
    if decoded is not None:
        dataset = decoded.with_inputs({"x": model.preprocess}, evaluation=True)
    else:
        dataset = ViewDataset(images, {"x": model.preprocess}, preload_side=preload_side, progress=progress,
                              evaluation=True)
    keys = [(i, 0) for i in range(len(images))]
    if isinstance(model, torch.nn.Module):
        model.to(device)
    return embed_views(model, dataset, keys, "x", device, batch_size, desc or f"embed {images.name}",
                       progress).numpy()
