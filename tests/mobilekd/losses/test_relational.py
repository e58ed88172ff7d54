"""RKD distance/angle, distance-KL, FitNets hint and attention transfer: hand-computed values and properties."""

import math

import pytest
import torch
import torch.nn.functional as F

from mobilekd.losses import AttentionTransferLoss, DistanceKLLoss, HintLoss, RKDAngleLoss, RKDDistanceLoss


def smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ---------------------------------------------------------------- RKD distance

def test_rkd_distance_hand_computed_quadratic_regime():
    student = torch.tensor([[0.0], [1.0], [3.0]])                 # 1-d: d01 = 1, d02 = 3, d12 = 2, mu = 6/3 = 2
    teacher = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # 2-d: d01 = 1, d02 = 2, d12 = 1, mu = 4/3
    # psi_S = (0.5, 1.5, 1.0), psi_T = (0.75, 1.5, 0.75) -> differences 0.25, 0, 0.25 -> SmoothL1 0.03125, 0, 0.03125
    # each pair appears twice in the N x N matrix, the 3 diagonal zeros count too: 2 * 0.0625 / 9 = 1/72
    assert RKDDistanceLoss()(student, teacher).item() == pytest.approx(1 / 72, rel=1e-5)


def test_rkd_distance_hand_computed_linear_regime():
    student = torch.tensor([[0.0], [4.0], [3.0]])  # d01 = 4, d02 = 3, d12 = 1, mu = 8/3 -> psi_S = (1.5, 9/8, 3/8)
    teacher = torch.tensor([[0.0], [0.0], [1.0]])  # d01 = 0, d02 = 1, d12 = 1, mu = 2/3 (mean over i != j,
    #                                                 zeros included; official d[d>0] would give 1) -> (0, 1.5, 1.5)
    # differences 1.5 (linear: 1.5 - 0.5 = 1), -3/8 (0.5 * 9/64 = 9/128), -9/8 (9/8 - 0.5 = 5/8)
    expected = 2 * (1.0 + 9 / 128 + 5 / 8) / 9  # = 217/576
    assert RKDDistanceLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(217 / 576)


def test_rkd_distance_scale_invariant_zero_on_similarity_and_gradients():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 4), torch.randn(6, 9)
    loss = RKDDistanceLoss()
    assert loss(7.3 * student, teacher).item() == pytest.approx(loss(student, teacher).item(), rel=1e-4)
    rotation, _ = torch.linalg.qr(torch.randn(9, 9))
    assert loss(0.2 * teacher @ rotation + 1.0, teacher).item() < 1e-8  # similarity transform: same structure
    student = torch.cat([student, student[:1]]).requires_grad_(True)   # a duplicated row: zero distance
    teacher = torch.cat([teacher, teacher[1:2]]).requires_grad_(True)
    value = loss(student, teacher)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None


# ---------------------------------------------------------------- RKD angle

def test_rkd_angle_hand_computed():
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])                 # right isosceles triangle
    teacher = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])  # collinear, 3-d
    # psi_A(i, j, k), i the vertex: j == k != i gives 1 in both, j == i or k == i gives 0 in both; only the
    # 2 entries (j, k), (k, j) with {i, j, k} distinct differ: cosine of the angle at vertex i.
    # student: vertex 0 -> 90 deg, cos 0; vertices 1, 2 -> 45 deg, cos sqrt(2)/2
    # teacher: vertex 0 -> cos 1 (both +x); vertex 1 -> cos -1 (-x, +x); vertex 2 -> cos 1
    # differences: -1 -> 0.5 (either branch); sqrt2/2 + 1 -> linear sqrt2/2 + 0.5; sqrt2/2 - 1 -> 0.5 (1 - sqrt2/2)^2
    r = math.sqrt(2) / 2
    expected = 2 * (smooth_l1(-1.0) + smooth_l1(r + 1) + smooth_l1(r - 1)) / 27  # mean over N^3 = 27
    assert expected == pytest.approx(2 * (0.5 + (r + 0.5) + 0.5 * (1 - r) ** 2) / 27)
    assert RKDAngleLoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_scale_and_translation_invariant_and_gradients():
    torch.manual_seed(1)
    student, teacher = torch.randn(5, 3), torch.randn(5, 8)
    loss = RKDAngleLoss()
    base = loss(student, teacher).item()
    assert base > 0
    assert loss(4.0 * student + torch.tensor([1.0, -2.0, 3.0]), teacher).item() == pytest.approx(base, rel=1e-4)
    assert loss(3.0 * teacher - 1.0, teacher).item() < 1e-10
    student = torch.cat([student, student[:1]]).requires_grad_(True)  # duplicated row: a zero difference vector
    teacher = torch.cat([teacher, teacher[2:3]]).requires_grad_(True)
    value = loss(student, teacher)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all() and teacher.grad is None


@pytest.mark.parametrize("loss", [RKDDistanceLoss(), RKDAngleLoss(), DistanceKLLoss()])
def test_relational_losses_reject_bad_batches(loss):
    with pytest.raises(ValueError, match="batch sizes differ"):
        loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="expected student"):
        loss(torch.randn(4, 3, 1), torch.randn(4, 3))


# ---------------------------------------------------------------- distance KL

@pytest.mark.parametrize("distance,teacher", [
    ("euclidean", [[0.0], [1.0], [2.0]]),              # d01 = 1, d02 = 2, d12 = 1
    ("cosine", [[2.0, 0.0], [0.0, 1.0], [-3.0, 0.0]]),  # 1 - cos: d01 = 1, d02 = 2, d12 = 1 (norms irrelevant)
])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_distance_kl_hand_computed(distance, teacher, tau):
    student = torch.eye(3)  # all pairwise distances equal (sqrt 2 / cosine 1) -> q_i uniform (1/2, 1/2)
    # teacher, anchor 0: softmax(-1/tau, -2/tau) = (a, 1 - a), a = sigmoid(1/tau); anchor 1: (1/2, 1/2);
    # anchor 2: (1 - a, a). KL(p || uniform) = a ln a + (1 - a) ln(1 - a) + ln 2 for anchors 0 and 2, 0 for 1.
    a = 1 / (1 + math.exp(-1 / tau))
    expected = 2 * (a * math.log(a) + (1 - a) * math.log(1 - a) + math.log(2)) / 3
    # (the reverse direction KL(q || p) = 2 * (-ln 2 - 0.5 ln a - 0.5 ln(1 - a)) / 3 differs)
    loss = DistanceKLLoss(temperature=tau, distance=distance)
    assert loss(student, torch.tensor(teacher)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_distance_kl_zero_for_same_embeddings_positive_otherwise_and_gradients(distance):
    torch.manual_seed(2)
    teacher = F.normalize(torch.randn(6, 5), dim=1)
    loss = DistanceKLLoss(temperature=0.1, distance=distance)
    assert abs(loss(teacher.clone(), teacher).item()) < 1e-6
    student = torch.randn(6, 3, requires_grad=True)
    value = loss(student, teacher.requires_grad_(True))
    assert value.item() > 0
    value.backward()
    assert torch.isfinite(student.grad).all() and teacher.grad is None


def test_distance_kl_rejects_bad_arguments():
    with pytest.raises(ValueError, match="distance"):
        DistanceKLLoss(distance="manhattan")
    with pytest.raises(ValueError, match="temperature"):
        DistanceKLLoss(temperature=0.0)


# ---------------------------------------------------------------- FitNets hint

def test_hint_loss_hand_computed_with_interpolation():
    loss = HintLoss([1, 1], [2, 1])
    with torch.no_grad():
        loss.regressors[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))  # r(S) = (S, 2S)
        loss.regressors[1].weight.fill_(1.0)
    s0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    t0 = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[2.0, 4.0], [6.0, 6.0]]]).view(1, 2, 2, 2)
    # stage 0: r(S) = ([[1,2],[3,4]], [[2,4],[6,8]]); only 8 vs 6 differs -> 2^2 / 8 entries = 0.5
    s1 = torch.tensor([0.0, 4.0]).view(1, 1, 1, 2)
    t1 = torch.zeros(1, 1, 1, 4)
    # stage 1: width 2 -> 4, align_corners=False: source x = (x' + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
    # (clamped to [0, 1]) -> [0, 1, 3, 4]; squared error vs 0: (0 + 1 + 9 + 16) / 4 = 6.5
    s0.requires_grad_(True)
    value = loss([s0, s1], [t0, t1])
    assert value.item() == pytest.approx((0.5 + 6.5) / 2, rel=1e-6)
    value.backward()
    assert torch.isfinite(s0.grad).all() and all(torch.isfinite(r.weight.grad).all() for r in loss.regressors)


def test_hint_loss_zero_for_identity_regressors_and_gradients():
    torch.manual_seed(3)
    loss = HintLoss([3, 4], [3, 4])
    with torch.no_grad():
        for regressor, channels in zip(loss.regressors, [3, 4]):
            regressor.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
    teacher = [torch.randn(2, 3, 5, 5), torch.randn(2, 4, 3, 3)]
    assert loss([t.clone() for t in teacher], teacher).item() < 1e-12
    fresh = HintLoss([2, 4], [3, 6])
    student = [torch.randn(2, 2, 4, 4, requires_grad=True), torch.randn(2, 4, 2, 2, requires_grad=True)]
    teacher = [torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 6, 2, 2, requires_grad=True)]
    value = fresh(student, teacher)
    value.backward()
    assert value.item() > 0 and all(torch.isfinite(s.grad).all() for s in student)
    assert all(t.grad is None for t in teacher)
    assert all(r.weight.grad is not None and r.weight.grad.abs().sum() > 0 for r in fresh.regressors)


def test_hint_loss_rejects_bad_inputs():
    with pytest.raises(ValueError, match="stages"):
        HintLoss([2, 4], [3])
    loss = HintLoss([2, 4], [3, 6])
    good_s = [torch.randn(1, 2, 4, 4), torch.randn(1, 4, 2, 2)]
    good_t = [torch.randn(1, 3, 4, 4), torch.randn(1, 6, 2, 2)]
    with pytest.raises(ValueError, match="1 student maps but 2 teacher maps"):
        loss(good_s[:1], good_t)
    with pytest.raises(ValueError, match="built for 2 stages"):
        loss(good_s[:1], good_t[:1])
    with pytest.raises(ValueError, match="stage 1: student map has 5 channels, expected 4"):
        loss([good_s[0], torch.randn(1, 5, 2, 2)], good_t)
    with pytest.raises(ValueError, match="stage 0: teacher map has 4 channels, expected 3"):
        loss(good_s, [torch.randn(1, 4, 4, 4), good_t[1]])
    with pytest.raises(ValueError, match="stage 0: student and teacher batch sizes differ"):
        loss(good_s, [torch.randn(2, 3, 4, 4), good_t[1]])


# ---------------------------------------------------------------- attention transfer

def test_attention_transfer_hand_computed_with_interpolation():
    s0 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, -1.0]]]).view(1, 2, 2, 2)
    t0 = torch.zeros(1, 3, 2, 2)
    t0[0, 0, 0, 0] = 2.0
    # stage 0: sum_c S^2 = [[1,1],[1,1]] -> Q_S = (1/2, 1/2, 1/2, 1/2); sum_c T^2 = [[4,0],[0,0]] -> Q_T = (1, 0, 0, 0)
    # (Q_S - Q_T)^2 = 0.25 at each of 4 positions -> 0.25
    s1 = torch.tensor([0.0, 2.0]).view(1, 1, 1, 2)
    t1 = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    # stage 1: sum_c S^2 = [0, 4], resized 2 -> 4 (bilinear, align_corners=False) = [0, 1, 3, 4], norm sqrt(26);
    # Q_T = (0, 1, 0, 0); unit vectors: ||Q_S - Q_T||^2 = 2 - 2 Q_S.Q_T = 2 - 2/sqrt(26); mean over 4 positions.
    # (resizing the feature map instead, [0, .5, 1.5, 2]^2, would give a different value)
    stage1 = (2 - 2 / math.sqrt(26)) / 4
    s0.requires_grad_(True)
    value = AttentionTransferLoss()([s0, s1], [t0, t1])
    assert value.item() == pytest.approx((0.25 + stage1) / 2, rel=1e-6)
    value.backward()
    assert torch.isfinite(s0.grad).all()


def test_attention_transfer_zero_for_channel_permutation_and_per_sample_normalisation():
    torch.manual_seed(4)
    teacher = [torch.randn(3, 6, 5, 5), torch.randn(3, 8, 2, 2)]
    permuted = [t[:, torch.randperm(t.shape[1])] * torch.where(torch.rand(t.shape[1]) > 0.5, 1.0, -1.0)[:, None, None]
                for t in teacher]  # channels shuffled and sign-flipped: same sum_c A_c^2
    loss = AttentionTransferLoss()
    assert loss(permuted, teacher).item() < 1e-12
    assert loss([5.0 * t for t in teacher], teacher).item() < 1e-12  # scale per sample is normalised away
    student = [torch.randn(3, 2, 10, 10, requires_grad=True), torch.randn(3, 3, 2, 2, requires_grad=True)]
    batch = loss(student, teacher)
    # with equal map sizes per stage, the batch value is the mean of the per-sample values
    singles = [loss([s[i:i + 1] for s in student], [t[i:i + 1] for t in teacher]) for i in range(3)]
    assert batch.item() == pytest.approx(sum(v.item() for v in singles) / 3, rel=1e-5)
    batch.backward()
    assert all(torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0 for s in student)


def test_attention_transfer_rejects_bad_inputs():
    loss = AttentionTransferLoss()
    with pytest.raises(ValueError, match="1 student maps but 2 teacher maps"):
        loss([torch.randn(1, 2, 3, 3)], [torch.randn(1, 2, 3, 3)] * 2)
    with pytest.raises(ValueError, match="at least one stage"):
        loss([], [])
    with pytest.raises(ValueError, match="stage 0: expected NCHW"):
        loss([torch.randn(1, 2, 3)], [torch.randn(1, 2, 3, 3)])
    with pytest.raises(ValueError, match="stage 0: student and teacher batch sizes differ"):
        loss([torch.randn(2, 2, 3, 3)], [torch.randn(1, 2, 3, 3)])
