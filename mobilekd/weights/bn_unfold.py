"""BatchNorm unfolding: give a network with folded BatchNorm real running statistics, function unchanged.

Imported TF classifiers fold BN into the convolutions, so every BatchNorm is the identity plus a bias: exact in
eval mode, but train-mode BN normalises by the batch's own statistics and the first fine-tuning step destroys
the ImageNet function (numbers: ``../shared/weights/SOURCE.md``). Unfolding runs the network in eval mode on a
few hundred training images and records, for each BN, the per-channel mean ``m`` and variance ``v`` of its
input. A BN computing ``y = w0 (x - m0) / sqrt(v0 + eps) + b0`` then gets running stats ``(m, v)``,
``w = w0 sqrt(v + eps) / sqrt(v0 + eps)`` and ``b = b0 + w0 (m - m0) / sqrt(v0 + eps)``: its eval-mode output is
unchanged for every x, while train-mode batch statistics now start near ``(m, v)``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def unfold_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every BatchNorm2d of ``model`` to the input statistics over ``batches`` (model inputs), keeping the
    eval-mode function. Returns the number of images seen."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    sums = {id(bn): 0.0 for bn in norms}
    squares = {id(bn): 0.0 for bn in norms}
    counts = {id(bn): 0 for bn in norms}

    def record(module, inputs):
        x = inputs[0].detach().double()
        sums[id(module)] = sums[id(module)] + x.sum(dim=(0, 2, 3))
        squares[id(module)] = squares[id(module)] + (x * x).sum(dim=(0, 2, 3))
        counts[id(module)] += x.shape[0] * x.shape[2] * x.shape[3]

    hooks = [bn.register_forward_pre_hook(record) for bn in norms]
    was_training = model.training
    model.eval()
    images = 0
    try:
        for batch in batches:
            model(batch)
            images += len(batch)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if images == 0:
        return 0
    for bn in norms:
        n = counts[id(bn)]
        mean = sums[id(bn)] / n
        var = (squares[id(bn)] / n - mean * mean).clamp_min(0.0)
        old_scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        new_bias = bn.bias.double() + old_scale * (mean - bn.running_mean.double())
        bn.weight.copy_(old_scale * torch.sqrt(var + bn.eps))
        bn.bias.copy_(new_bias)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return images
