"""Every case measured with deep-ei 0.6.4 (shared/reference) reproduced through the torch API.

Both are plug-in estimates at the same sample count, so they share the bias and differ by sampling
noise only: the difference of two independent estimates has standard deviation sqrt(2) * sd, and
each check allows 4 of those (sd from the reference's `std_over_seeds` where given; otherwise from
the delta-method standard error of our own counts, or from our spread over seeds scaled by
1/sqrt(samples)). An analytic value is checked too where the case has one.
"""
import math

import jax
import numpy as np
import pytest
import torch
from torch import nn

import deep_ei_jax as dei
from deep_ei_jax import driver, planning
from deep_ei_jax.information import mutual_information_standard_error

Z = 4 * math.sqrt(2)


def linear_model(weights, activation=None):
    w = torch.tensor(weights)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    net = nn.Sequential(layer, activation) if activation is not None else nn.Sequential(layer)
    return net, dei.topology_of(net, torch.zeros((1, w.shape[1])))


def pairwise_standard_errors(layer, top, samples, bins, seed=0):
    """Delta-method standard errors of each pair's plug-in MI, from our own counts."""
    span, in_range, out_range = dei.bridge.resolve_span(layer, top, in_range=(0, 1),
                                                        out_range=(0, 1))
    binning = planning.Binning(in_range=in_range, out_range=out_range, in_bins=bins,
                               out_bins=bins)
    setup = planning.plan(jax.random.key(seed), span.chain, span.params, binning,
                          samples_hint=samples, single_input=False, pairs=True, groups=())
    sampling, counting = setup.sampling, setup.counting
    errors = []
    for offset in range(0, sampling.padded_outputs, counting.block_size):
        counts = counting.backend.tables(driver.pair_block_counts(setup, offset, 0, samples)[0],
                                         bins, bins)
        errors.append(np.asarray(mutual_information_standard_error(np.asarray(counts))))
    return np.concatenate(errors, axis=1)[:, :sampling.num_outputs]


@pytest.mark.parametrize("case", ["a_identity_1x1", "b_identity_2x2", "b_identity_5x5"])
def test_identity_cases(reference, case):
    cases, weights = reference
    ref = cases[case]
    net, top = linear_model(weights[f"{case}/weight"])
    kwargs = dict(samples=ref["samples"], in_range=(0, 1), out_range=(0, 1),
                  in_bins=ref["bins"], out_bins=ref["bins"], seed=0)
    parts = dei.ei_of_layer(net[0], top, **kwargs)
    vector = dei.vector_ei_of_layer(net[0], top, **kwargs)
    se = pairwise_standard_errors(net[0], top, ref["samples"], ref["bins"])
    # the sd of a sum is at most the sum of the sds
    tolerance = Z * max(se.sum(), ref.get("std_over_seeds", 0.0))
    assert parts == pytest.approx(ref["ei_of_layer"], abs=tolerance + 1e-4)
    # vector EI of a bijection is the plug-in entropy of the input states: its sd is that of
    # -log2 p(state) over N samples, tiny for near-uniform states; allow the pairwise tolerance
    assert vector == pytest.approx(ref["vector_ei_of_layer"], abs=tolerance + 1e-3)
    if "ei_of_layer_matrix" in ref:
        matrix = dei.ei_of_layer_matrix(net[0], top, **kwargs)
        expected = np.array(ref["ei_of_layer_matrix"])
        np.testing.assert_array_less(np.abs(matrix - expected), Z * se + 1e-4)


def test_d_20_10_sigmoid(reference):
    cases, weights = reference
    ref = cases["d_20_10_sigmoid"]
    net, top = linear_model(weights["d_20_10_sigmoid/0.weight"], nn.Sigmoid())
    kwargs = dict(in_range=(0, 1), in_bins=64, out_bins=64, seed=0)  # out_range inferred
    parts = dei.ei_of_layer(net[0], top, samples=100_000, **kwargs)
    assert parts == pytest.approx(ref["ei_of_layer_samples_1e5"],
                                  abs=Z * ref["std_over_seeds_ei_of_layer_1e5"])
    matrix = dei.ei_of_layer_matrix(net[0], top, samples=100_000, **kwargs)
    se = pairwise_standard_errors(net[0], top, 100_000, 64)
    expected = np.array(ref["ei_of_layer_matrix_samples_1e5"])
    np.testing.assert_array_less(np.abs(matrix - expected), Z * se)
    sensitivity = dei.sensitivity_of_layer(net[0], top, samples=1000, **kwargs)
    assert sensitivity == pytest.approx(ref["sensitivity_of_layer_samples_1000"],
                                        abs=Z * ref["std_over_seeds_sensitivity_1000"])


def test_groups_identity_2x2(reference):
    cases, weights = reference
    ref = cases["f_identity_2x2"]
    net, top = linear_model(weights["f_identity_2x2/weight"])
    groups = [tuple(tuple(side) for side in group) for group in ref["groups"]]
    values = dei.eis_between_groups(net[0], top, groups, samples=ref["samples"], in_range=(0, 1),
                                    out_range=(0, 1), in_bins=16, out_bins=16, seed=0)
    se = pairwise_standard_errors(net[0], top, ref["samples"], 16)
    # single-neuron groups are pairwise MIs: their delta-method se; the 2-2 group is a bijection
    assert values[0] == pytest.approx(ref["eis_between_groups"][0], abs=Z * se[0, 0] + 1e-4)
    assert values[1] == pytest.approx(ref["eis_between_groups"][1], abs=Z * se[0, 1] + 1e-4)
    assert values[2] == pytest.approx(ref["eis_between_groups"][2], abs=Z * se.sum() + 1e-3)
    for value, analytic in zip(values, ref["analytic"]):
        # analytic = infinite samples. Under independence 2 N ln2 * I is chi-square with
        # (B-1)^2 degrees of freedom: allow its mean + 4 sd. A bijection's estimate is the plug-in
        # entropy, low by at most (states - 1) / (2 N ln2).
        dof = (16 - 1) ** 2 if analytic < 5 else 256 - 1
        assert value == pytest.approx(analytic, abs=(dof + 4 * math.sqrt(2 * dof))
                                      / (2 * ref["samples"] * math.log(2)))


def test_iris_vector_and_pairwise(reference):
    cases, weights = reference
    ref = cases["c_iris_4_5_5_3_sigmoid"]
    net = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Sigmoid(), nn.Linear(5, 5, bias=False),
                        nn.Sigmoid(), nn.Linear(5, 3, bias=False), nn.Sigmoid())
    net.load_state_dict({k.split("/", 1)[1]: torch.tensor(v) for k, v in weights.items()
                         if k.startswith("c_iris")})
    top = dei.topology_of(net, torch.zeros((1, 4)))
    samples = ref["samples_vector_and_pairwise"]
    kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8)
    for layer, expected in zip((net[0], net[2], net[4]), ref["layers"]):
        vector, parts = dei.vector_and_pairwise_ei(layer, top, samples=samples, seed=0, **kwargs)
        # sd at `samples` from our spread over 8 seeds at samples/16, scaled by 1/sqrt(16)
        small = np.array([dei.vector_and_pairwise_ei(layer, top, samples=samples // 16,
                                                     seed=s, **kwargs) for s in range(1, 9)])
        sd = small.std(axis=0, ddof=1) / 4
        # 5 rather than 4 sds: the sd itself is estimated from 8 draws
        assert vector == pytest.approx(expected["vector_ei"], abs=5 * math.sqrt(2) * sd[0])
        assert parts == pytest.approx(expected["pairwise_ei"], abs=5 * math.sqrt(2) * sd[1])
