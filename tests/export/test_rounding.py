"""export.rounding: weights put on the int8 grid by the rounding that keeps each layer's output."""

import itertools

import pytest
import torch

from export.rounding import best_rounding, fold_batchnorm, input_moments, round_for_int8


def cost(levels, units, moment):
    error = levels - units
    return torch.einsum("ci,cij,cj->c", error, moment, error)


def test_exhaustive_rounding_is_the_exact_optimum_and_keeps_a_zero_sum_kernel():
    # an edge detector (weights sum to ~0) under smooth inputs: E[x x^T] dominated by the all-ones direction
    units = torch.tensor([[10.4, 20.4, 30.4, -40.6, -50.6, -60.6, 127.0, -36.0, 0.0]], dtype=torch.float64)
    ones = torch.ones(9, 9, dtype=torch.float64)
    moment = (ones + 0.01 * torch.eye(9, dtype=torch.float64))[None]
    chosen = best_rounding(units, moment)
    brute = min((torch.floor(units[0]) + torch.tensor(bits, dtype=torch.float64)
                 for bits in itertools.product((0, 1), repeat=9)), key=lambda q: float(cost(q[None], units, moment)))
    assert torch.equal(chosen[0], brute)
    nearest = torch.round(units)
    assert abs(float(chosen.sum() - units.sum())) < 1 <= abs(float(nearest.sum() - units.sum()))
    assert float(cost(chosen, units, moment)) < float(cost(nearest, units, moment))
    assert chosen[0, 6] == 127  # the largest weight keeps the scale


def test_greedy_rounding_never_worse_than_nearest():
    generator = torch.Generator().manual_seed(0)
    units = torch.randn(6, 40, generator=generator, dtype=torch.float64) * 40
    basis = torch.randn(6, 40, 40, generator=generator, dtype=torch.float64)
    moment = basis @ basis.transpose(1, 2)
    chosen = best_rounding(units, moment)
    assert ((chosen - units).abs() < 1).all()  # each weight goes to the level below or above
    assert (cost(chosen, units, moment) <= cost(torch.round(units), units, moment) + 1e-9).all()


@pytest.fixture
def conv_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU6(), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                              torch.nn.BatchNorm2d(8), torch.nn.ReLU6(), torch.nn.Conv2d(8, 16, 1, bias=False))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 3, 16, 16))
    return net.eval()


def test_folded_network_computes_the_same_and_rounded_weights_sit_on_the_int8_grid(conv_net):
    images = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(fold_batchnorm(conv_net)(images), conv_net(images), atol=1e-5)
    moments = input_moments(fold_batchnorm(conv_net), images)
    assert moments["3"].shape == (8, 9, 9) and moments["0"].shape == (8, 27, 27) and moments["6"].shape == (16, 8, 8)
    rounded, report = round_for_int8(conv_net, images)
    for name in ("0", "3", "6"):
        weight = rounded.get_submodule(name).weight.detach().double().flatten(1)
        scale = weight.abs().amax(1, keepdim=True) / 127
        assert torch.allclose(weight / scale, torch.round(weight / scale), atol=1e-4)  # the quantizer keeps them
        assert report[name]["chosen"] <= report[name]["nearest"] + 1e-12
