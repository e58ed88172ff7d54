"""Data: image sets in real layouts, class-disjoint splits, reproducible views, P x K sampling."""

from mobilekd.data.image_sets import ImageSet, load_image_set, split_classes
from mobilekd.data.sampler import PKBatchSampler
from mobilekd.data.view_dataset import ViewDataset
from mobilekd.data.views import Degradation, View, ViewSampler, center_view, evaluation_view, render, render_evaluation

__all__ = ["ImageSet", "load_image_set", "split_classes", "ViewDataset", "PKBatchSampler",
           "Degradation", "View", "ViewSampler", "center_view", "evaluation_view", "render", "render_evaluation"]
