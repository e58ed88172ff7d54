import math

import pytest
import torch

from mobilekd.losses import AbsoluteTeacherLoss, MetricLoss, RelativeTeacherLoss


def test_absolute_teacher_loss_hand_computed():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # rows: ||(1,-1)|| = sqrt(2), ||(0,0)|| -> sqrt(eps); mean of the two
    expected = (math.sqrt(2 + 1e-6) + math.sqrt(1e-6)) / 2
    assert AbsoluteTeacherLoss(2, 2)(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert AbsoluteTeacherLoss(2, 2, squared=True)(student, teacher).item() == pytest.approx(1.0, rel=1e-6)


def test_absolute_teacher_loss_projects_when_dims_differ():
    loss = AbsoluteTeacherLoss(2, 3, squared=True)
    with torch.no_grad():
        loss.projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    student = torch.tensor([[3.0, 4.0]])  # projected -> (3,4,0)/5
    teacher = torch.tensor([[0.0, 0.0, 1.0]])
    # ||(0.6, 0.8, -1)||^2 = 0.36 + 0.64 + 1 = 2
    assert loss(student, teacher).item() == pytest.approx(2.0, rel=1e-6)
    assert loss.projection.weight.requires_grad


def test_relative_teacher_loss_hand_computed():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # d01 = sqrt2, d02 = 2, d12 = sqrt2
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])   # d01 = 0,     d02 = sqrt2, d12 = sqrt2
    squared_sum = 2 * (2.0 + (2 - math.sqrt(2)) ** 2)              # both triangles of the matrix
    assert RelativeTeacherLoss("frobenius")(student, teacher).item() == pytest.approx(math.sqrt(squared_sum), rel=1e-5)
    assert RelativeTeacherLoss("mean_sq")(student, teacher).item() == pytest.approx(squared_sum / 6, rel=1e-5)
    assert RelativeTeacherLoss("mean_abs")(student, teacher).item() == pytest.approx(4 / 6, rel=1e-5)


def test_relative_teacher_loss_is_zero_for_a_rotation_and_has_finite_gradients():
    torch.manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4))
    student = (teacher @ rotation).requires_grad_(True)
    loss = RelativeTeacherLoss("mean_sq")(student, teacher)
    assert loss.item() < 1e-8
    loss.backward()
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", ["triplet", "multi_similarity", "proxy_anchor", "normalized_softmax"])
def test_metric_losses_prefer_separated_classes(name):
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    loss = MetricLoss(name, num_classes=3, embed_dim=8)
    if loss.has_parameters:  # proxies at the class centres, as after training
        with torch.no_grad():
            next(loss.parameters()).copy_(centres.t() if name == "normalized_softmax" else centres)
    separated = torch.nn.functional.normalize(centres[labels] + 0.01 * torch.randn(6, 8), dim=1)
    mixed = torch.nn.functional.normalize(centres[torch.tensor([0, 1, 2, 0, 1, 2])] + 0.01 * torch.randn(6, 8), dim=1)
    assert loss(separated, labels).item() < loss(mixed, labels).item()
