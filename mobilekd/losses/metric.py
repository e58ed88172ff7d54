"""The student's (or teacher's) own metric-learning loss, from pytorch-metric-learning.

* ``triplet``           -- TripletMarginLoss with a TripletMarginMiner ("semihard"); Schroff et al., FaceNet,
                           CVPR 2015; margin 0.1 (~ MLRC best for CUB, 0.0961).
* ``multi_similarity``  -- MultiSimilarityLoss (alpha 2, beta 50, base 0.5) with MultiSimilarityMiner(0.1);
                           Wang et al., "Multi-Similarity Loss with General Pair Weighting", CVPR 2019.
* ``proxy_anchor``      -- ProxyAnchorLoss (margin 0.1, alpha 32); Kim et al., "Proxy Anchor Loss for Deep
                           Metric Learning", CVPR 2020. Has learnable proxies.
* ``normalized_softmax``-- NormalizedSoftmaxLoss (temperature 0.05); Zhai & Wu, "Classification is a Strong
                           Baseline for Deep Metric Learning", BMVC 2019. Learnable class weights. It is the
                           loss that trained from-scratch MobileNet-0.25 students at all in the calibration run
                           (../shared/notes/calibration.md).

The learnable proxies / class weights train with the student, at the same (base) learning rate and schedule,
without weight decay (``mobilekd.engine.Trainer``). Kim et al. train their proxies at lr x 100; that choice
is not reproduced here and has not been measured against the base lr on our data.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses, miners
from torch import nn

from mobilekd.losses.registry import LossContext, Option, register_loss

METRIC_LOSSES = ("triplet", "multi_similarity", "proxy_anchor", "normalized_softmax", "none")
PROXY_LOSSES = ("proxy_anchor", "normalized_softmax")


@register_loss("metric", inputs="labels", weight=1.0, help="student's own metric loss (pytorch-metric-learning)",
               options=[Option("loss", str, "normalized_softmax", "which metric loss (none: off)",
                               choices=METRIC_LOSSES, off="none", fixed_on_resume=True)])
class MetricLoss(nn.Module):
    """loss(embeddings, labels) with its miner; ``has_parameters`` tells whether it holds proxies."""

    def __init__(self, name: str, num_classes: int, embed_dim: int):
        super().__init__()
        if name not in METRIC_LOSSES or name == "none":
            raise ValueError(f"metric loss must be one of {METRIC_LOSSES[:-1]}, got {name!r}")
        self.name = name
        self.miner = None
        if name == "triplet":
            self.loss = losses.TripletMarginLoss(margin=0.1)
            self.miner = miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard")
        elif name == "multi_similarity":
            self.loss = losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
            self.miner = miners.MultiSimilarityMiner(epsilon=0.1)
        elif name == "proxy_anchor":
            self.loss = losses.ProxyAnchorLoss(num_classes=num_classes, embedding_size=embed_dim, margin=0.1, alpha=32)
        else:
            self.loss = losses.NormalizedSoftmaxLoss(num_classes=num_classes, embedding_size=embed_dim,
                                                     temperature=0.05)

    @classmethod
    def from_context(cls, context: LossContext, loss: str = "normalized_softmax") -> "MetricLoss":
        return cls(loss, context.num_classes, context.student_dim)

    @property
    def has_parameters(self) -> bool:
        return self.name in PROXY_LOSSES

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)
