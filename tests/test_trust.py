"""Numbers a user can trust at the defaults (issue 14, items 1-3): the estimated plug-in bias in
every Info and its warning, NaN when nothing was counted, the NSB and Chao-Shen estimators and the
shuffle correction, each against the exact value."""
import importlib.util
import math
import warnings

import jax
import numpy as np
import pytest
import scipy.integrate
import scipy.special

from deep_ei_jax import cli, pure
from deep_ei_jax import estimators as est
from deep_ei_jax.exact import exact_ei_parts_tables

BIAS = "estimated plug-in bias"


def flatten(side: int):
    """The Flatten of a side x side image: output i is input i (identity), as in an MLP's first
    module. With equal bins on both sides, pair (i, i) has I = log2(bins) and every other pair
    is independent (I = 0)."""
    return pure.Chain(layers=(pure.Flatten(),), in_shape=(1, side, side)), ({},)


def expected_flatten_bias(n: int, bins: int, samples: int) -> float:
    """The plug-in bias of EI_parts implied by the exact expected plug-in value: n (n - 1)
    independent uniform pairs and n diagonal pairs, each E[plug-in] - truth from the multinomial
    (`expected_plugin_mutual_information`, no sampling)."""
    independent = est.expected_plugin_mutual_information(np.ones((bins, bins)), samples)
    diagonal = est.expected_plugin_mutual_information(np.eye(bins), samples)
    return float(n * (n - 1) * independent + n * (diagonal - math.log2(bins)))


def _bias_case(side, samples=10_000, bins=16):
    chain, params = flatten(side)
    with pytest.warns(RuntimeWarning, match=BIAS) as record:
        value, info = pure.ei_parts(jax.random.key(0), chain, params, samples=samples,
                                    in_bins=bins, out_bins=bins)
    n = side * side
    expected = expected_flatten_bias(n, bins, samples)
    # The bound: the Info estimate within 20% of the bias the exact expectation implies.
    # (At N = 1e4 every one of the 256 cells of a pair is occupied, so the estimate is exactly
    # (15 x 15) / (2 N ln 2) per independent pair and agrees with the expectation to O(1/N^2).)
    assert abs(info.bias - expected) <= 0.2 * abs(expected)
    assert any("estimator='jackknife'" in str(w.message) and "method='exact'" in str(w.message)
               and "more samples" in str(w.message) for w in record)
    # the deep-ei-compatible value is unchanged: the truth is n log2(bins), plus the bias
    assert value == pytest.approx(n * math.log2(bins) + expected, rel=0.01)
    return info


def test_flatten_bias_is_estimated_and_warned_small_analogue():
    # 36 inputs instead of 784: the same structure (independent off-diagonal pairs, a perfect
    # diagonal), 1260 pairs instead of 613,872; the 784-input case itself is the slow test below
    _bias_case(6)


@pytest.mark.slow
def test_flatten_784_bias_is_estimated_and_warned():
    info = _bias_case(28)
    assert info.bias > 9000  # about 10,000 of the 13,148 bits


def test_dense_20_10_at_a_million_samples_does_not_warn():
    rng = np.random.default_rng(0)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(20,))
    params = ({"w": rng.normal(size=(20, 10)).astype(np.float32)},)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        value, info = pure.ei_parts(jax.random.key(0), chain, params, samples=1_000_000)
    assert 0 < info.bias < 0.1 * value


def test_bias_warning_can_be_turned_off_and_is_checked():
    chain, params = flatten(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _, info = pure.ei_parts(jax.random.key(0), chain, params, samples=2000, in_bins=16,
                                out_bins=16, bias_warning=None)
        pure.ei_parts(jax.random.key(0), chain, params, samples=2000, in_bins=16, out_bins=16,
                      estimator="jackknife")  # a corrected estimator does not warn
    assert info.bias > 0
    with pytest.raises(ValueError, match="bias_warning"):
        pure.ei_parts(jax.random.key(0), chain, params, samples=100, bias_warning=-1)


def test_vector_ei_groups_and_sensitivity_carry_their_bias():
    chain, params = flatten(2)
    with pytest.warns(RuntimeWarning, match=BIAS):  # |bias| is about 6% of the value here
        value, info = pure.ei(jax.random.key(0), chain, params, samples=300, in_bins=4,
                              out_bins=4, bias_warning=0.01)
    # the Miller-Madow term of the states seen: (m_xy - m_x - m_y + 1) / (2 N ln 2); here the
    # output is the input, so m_xy = m_x = m_y = m (at most 256 states, at most N = 300) and the
    # term is (1 - m) / (2 N ln 2) < 0: plug-in H(X) falls short of 8 bits (by more than this
    # first-order term says when, as here, most states are seen about once)
    assert isinstance(info.bias, float)
    assert -255 / (600 * math.log(2)) <= info.bias < 0
    assert value < 8 + info.bias
    values, info = pure.eis_between_groups(jax.random.key(0), chain, params,
                                           [((0,), (0,)), ((0,), (1,))], samples=5000,
                                           in_bins=4, out_bins=4, bias_warning=None)
    assert len(info.bias) == 2
    assert info.bias[0] == pytest.approx(-3 / (2 * 5000 * math.log(2)))   # 4 states each
    assert info.bias[1] == pytest.approx(9 / (2 * 5000 * math.log(2)))    # 16 joint states
    matrix, info = pure.sensitivity_matrix(jax.random.key(0), chain, params, samples=500,
                                           in_bins=4, out_bins=4, bias_warning=None)
    # each input's own output: 4 - 4 - 4 + 1 = -3; every other output is constant: 4 - 4 - 1 + 1
    assert info.bias == pytest.approx(4 * -3 / (2 * 500 * math.log(2)))


# ---------------------------------------------------------------- nothing counted is NaN

def _sigmoid_layer():
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(3,))
    return chain, ({"w": np.ones((3, 2), np.float32)},)


def test_all_dropped_vector_ei_and_ei_parts_are_nan_in_the_pure_api():
    chain, params = _sigmoid_layer()
    options = dict(samples=2000, out_range=(2.0, 3.0))  # no sigmoid output reaches it
    with pytest.warns(RuntimeWarning, match="dropped"):
        value, info = pure.ei(jax.random.key(0), chain, params, **options)
    assert math.isnan(value) and info.dropped == info.total == 2000 and math.isnan(info.bias)
    with pytest.warns(RuntimeWarning, match="dropped"):
        matrix, info = pure.ei_parts_matrix(jax.random.key(0), chain, params, **options)
    assert np.isnan(matrix).all() and math.isnan(info.bias)
    with pytest.warns(RuntimeWarning, match="dropped"):
        (ei, parts), _ = pure.ei_and_ei_parts(jax.random.key(0), chain, params, **options)
    assert math.isnan(ei) and math.isnan(parts)
    with pytest.warns(RuntimeWarning, match="dropped"):
        matrix, _ = pure.sensitivity_matrix(jax.random.key(0), chain, params, samples=200,
                                            out_range=(2.0, 3.0))
    assert np.isnan(matrix).all()
    # adaptive: nothing to converge on; stops at once rather than doubling to max_samples
    with pytest.warns(RuntimeWarning):
        value, info = pure.ei(jax.random.key(0), chain, params, out_range=(2.0, 3.0))
    assert math.isnan(value) and len(info.estimates) == 1


def test_partly_dropped_pairs_count_zero_not_nan():
    # output 1 never reaches out_range's [0.9, 1]: its pairs count nothing, output 0's do
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(2,))
    params = ({"w": np.array([[8.0, -8.0], [0.0, 0.0]], np.float32),
               "b": np.array([0.0, 0.0], np.float32)},)
    with pytest.warns(RuntimeWarning, match="dropped"):
        matrix, _ = pure.ei_parts_matrix(jax.random.key(0), chain, params, samples=4000,
                                         out_range=(0.9, 1.0), bias_warning=None)
    assert np.isfinite(matrix).all() and (matrix[:, 1] == 0).all() and matrix[0, 0] > 0


SWEPT = ("ei", "ei_parts", "sensitivity", "degeneracy")


def _two_sets():
    """Two sets of a 3 -> 2 sigmoid layer. Set 0 (all weights 1): one noised input reaches at most
    sigmoid(1) = 0.73, all three sigmoid(3) = 0.95. Set 1: output 1 = sigmoid(-8 x0 + x2) < 0.74."""
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(3,))
    ones = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    other = {"w": np.array([[8, -8], [0, 0], [1, 1]], np.float32), "b": np.zeros(2, np.float32)}
    return chain, [(ones,), (other,)]


def _same(a, b):
    """Equal, NaN where the other is NaN (a sweep and a single call of one set)."""
    return (math.isnan(a) and math.isnan(b)) or a == b


def _single_calls(params, chain, method, out_range, samples=1000, sensitivity_samples=50):
    """Each swept measure of one set by single calls (each warning as a single call warns),
    and the warnings."""
    key, options = jax.random.key(0), dict(out_range=out_range, method=method, bias_warning=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ei, _ = pure.ei(key, chain, params, samples=samples, **options)
        parts, _ = pure.ei_parts(key, chain, params, samples=samples, **options)
        sens, _ = pure.sensitivity(key, chain, params, samples=sensitivity_samples, **options)
    return dict(ei=ei, ei_parts=parts, sensitivity=sens, degeneracy=sens - ei), \
        [str(w.message) for w in caught]


def _swept(chain, sets, method, out_range, measures=SWEPT):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pure.sweep(jax.random.key(0), chain, pure.stack_params(sets), samples=1000,
                            sensitivity_samples=50, out_range=out_range, method=method,
                            measures=measures)
    return result, [str(w.message) for w in caught]


@pytest.mark.parametrize("method", ["numba", "scatter"])  # counted on the host; on the device
def test_all_dropped_is_nan_in_sweeps_and_single_calls(method):
    chain, sets = _two_sets()
    result, caught = _swept(chain, sets, method, (2.0, 3.0))  # no sigmoid output reaches it
    for name in SWEPT:
        assert np.isnan(getattr(result, name)).all(), name
    assert np.isnan(result.ei_parts_matrix).all() and np.isnan(result.sensitivity_matrix).all()
    np.testing.assert_array_equal(result.sensitivity_out_of_range, 50 * 3 * 2)
    for measure in ("vector EI", "EI_parts", "sensitivity"):  # one warning per measure
        assert sum(f"counted nothing, so their {measure} is NaN" in w and "dropped" in w
                   for w in caught) == 1, (measure, caught)
    for params in sets:
        single, warned = _single_calls(params, chain, method, (2.0, 3.0))
        assert all(math.isnan(v) for v in single.values()), single
        assert sum("were dropped" in w for w in warned) == 3  # EI, EI_parts, sensitivity
    # each measure alone (only its own work runs) is NaN and warns (EI alone: the sweep's
    # dropped warning before this issue, in test_sweep.py)
    for name, measure in (("sensitivity", "sensitivity"), ("degeneracy", "sensitivity"),
                          ("ei_parts", "EI_parts")):
        alone, caught = _swept(chain, sets, method, (2.0, 3.0), measures=(name,))
        assert np.isnan(getattr(alone, name)).all(), name
        assert any(f"their {measure} is NaN" in w for w in caught), (name, caught)
    clipped = pure.sweep(jax.random.key(0), chain, pure.stack_params(sets), samples=1000,
                         sensitivity_samples=50, out_range=(2.0, 3.0), method=method,
                         policy="clip")  # clipped values are counted: nothing is NaN
    assert all(np.isfinite(getattr(clipped, name)).all() for name in SWEPT)


@pytest.mark.parametrize("method", ["numba", "scatter"])
def test_partly_dropped_sweep_equals_single_calls(method):
    # out_range (0.9, 1): set 0's one-input sensitivity counts nothing (NaN) while its EI and
    # EI_parts count some samples; set 1 drops every sample whole from EI (output 1 never gets
    # there) but counts output 0's EI_parts and sensitivity pairs. The sweep matches each single
    # call: NaN where it is NaN, else equal (numba: the same counts and compiled formulas, so
    # exactly; scatter: float32 rounding of the same formulas, bounded as in test_sweep.py)
    chain, sets = _two_sets()
    result, caught = _swept(chain, sets, method, (0.9, 1.0))
    for k, params in enumerate(sets):
        single, _ = _single_calls(params, chain, method, (0.9, 1.0))
        for name in SWEPT:
            swept = float(getattr(result, name)[k])
            if method == "numba" or math.isnan(single[name]):
                assert _same(swept, single[name]), (k, name, swept, single[name])
            else:
                assert swept == pytest.approx(single[name], abs=1e-4), (k, name)
    assert math.isnan(result.sensitivity[0]) and np.isfinite(result.ei_parts).all()
    assert math.isfinite(result.ei[0]) and math.isnan(result.ei[1])
    assert np.isfinite(result.sensitivity[1]) and 0 < result.sensitivity_out_of_range[1] < 300
    assert any("sets [0] counted nothing, so their sensitivity is NaN" in w for w in caught)
    # a wider out_range drops some values of every measure and counts the rest: all finite
    result, caught = _swept(chain, sets, method, (0.6, 1.0))
    assert all(np.isfinite(getattr(result, name)).all() for name in SWEPT)
    assert (result.sensitivity_out_of_range > 0).all() and (result.dropped > 0).all()
    assert not any("counted nothing" in w for w in caught)
    for k, params in enumerate(sets):
        single, warned = _single_calls(params, chain, method, (0.6, 1.0))
        assert any("were dropped" in w for w in warned)
        for name in SWEPT:
            assert float(getattr(result, name)[k]) == pytest.approx(
                single[name], abs=0 if method == "numba" else 1e-4), (k, name)


def _torch_net(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Sigmoid())


def test_all_dropped_is_nan_in_the_torch_sweep_tracker_and_cli(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    import deep_ei_jax as dei
    nets = [_torch_net(torch), _torch_net(torch)]
    options = dict(samples=1000, sensitivity_samples=50, out_range=(2.0, 3.0))
    with pytest.warns(RuntimeWarning, match="their sensitivity is NaN"):
        records = dei.sweep(nets, torch.zeros((1, 3)), **options)
    assert len(records) == 2
    assert all(math.isnan(r[name]) for r in records for name in SWEPT)
    top = dei.topology_of(nets[0], torch.zeros((1, 3)))
    with pytest.warns(RuntimeWarning, match="dropped"):
        assert math.isnan(dei.sensitivity_of_layer(nets[0][0], top, samples=50, seed=0,
                                                   out_range=(2.0, 3.0)))
    tracker = dei.Tracker(tmp_path / "run.jsonl", torch.zeros((1, 3)), every=1, **options)
    with pytest.warns(RuntimeWarning, match="their sensitivity is NaN"):
        returned = tracker(nets[0], 0)
    for record in returned + tracker.records():  # NaN survives the JSON line
        assert all(math.isnan(record[name]) for name in SWEPT), record
    torch.jit.script(nets[0]).save(str(tmp_path / "net.pt"))
    with pytest.warns(RuntimeWarning, match="their sensitivity is NaN"):
        status = cli.main(["measure", str(tmp_path / "net.pt"), "--input-shape", "1,3",
                           "--samples", "1000", "--sensitivity-samples", "50",
                           "--out-range", "2,3", "--no-progress", "--json",
                           str(tmp_path / "out.json")])
    row, *rest = capsys.readouterr().out.splitlines()[1:]
    assert status == 0 and row.split()[2:6] == ["nan"] * 4
    assert any("nothing was counted for layer(s) 0 (ei, ei_parts, sensitivity, degeneracy)"
               in line for line in rest)
    if importlib.util.find_spec("matplotlib") is not None:  # plot refuses NaN, saying why
        assert cli.main(["plot", str(tmp_path / "out.json"), "--out", str(tmp_path / "f")]) == 2
        assert "nothing was counted" in capsys.readouterr().err


def test_all_dropped_is_nan_in_the_torch_api():
    torch = pytest.importorskip("torch")
    import deep_ei_jax as dei
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Sigmoid())
    top = dei.topology_of(net, torch.zeros((1, 3)))
    options = dict(samples=1000, seed=0, out_range=(2.0, 3.0))
    with pytest.warns(RuntimeWarning, match="dropped"):
        assert math.isnan(dei.vector_ei_of_layer(net[0], top, **options))
    with pytest.warns(RuntimeWarning, match="dropped"):
        # ei_of_layer reports values below 0.01 as 0.0, as deep-ei does; NaN stays NaN
        assert math.isnan(dei.ei_of_layer(net[0], top, **options))


def test_cli_table_prints_nan_and_says_why():
    record = dict(layer=0, module="Linear", ei=math.nan, ei_parts=math.nan, sensitivity=0.5,
                  degeneracy=math.nan, samples=100, sensitivity_samples=10)
    table = cli.format_table([record])
    assert "nan" in table.splitlines()[1]
    assert "nothing was counted for layer(s) 0" in table and "output range" in table


# ---------------------------------------------------------------- NSB, Chao-Shen, shuffling

def _nsb_by_quadrature(counts, k):
    """The NSB posterior mean (nats) by scipy's adaptive quadrature over t = ln(K beta): an
    independent check of the fixed rule (same formulas, written out directly)."""
    n = np.asarray(counts, np.float64)
    total = n.sum()

    def log_post(t):
        a = math.exp(t)
        b = a / k
        prior = scipy.special.polygamma(1, a + 1) - scipy.special.polygamma(1, b + 1) / k
        return (scipy.special.gammaln(a) - scipy.special.gammaln(total + a)
                + np.sum(scipy.special.gammaln(n + b) - scipy.special.gammaln(b))
                + math.log(prior) + t)

    def mean_h(t):
        a = math.exp(t)
        b = a / k
        return scipy.special.digamma(total + a + 1) - np.sum(
            (n + b) / (total + a) * scipy.special.digamma(n + b + 1))

    grid = np.linspace(-12, 30, 2001)
    posterior = [log_post(t) for t in grid]
    peak, where = max(posterior), [grid[int(np.argmax(posterior))]]
    weight = scipy.integrate.quad(lambda t: math.exp(log_post(t) - peak), -12, 30, limit=400,
                                  points=where)[0]
    first = scipy.integrate.quad(lambda t: math.exp(log_post(t) - peak) * mean_h(t), -12, 30,
                                 limit=400, points=where)[0]
    return first / weight


@pytest.mark.parametrize("k, samples", [(16, 10), (64, 100), (256, 1000)])
def test_nsb_matches_adaptive_quadrature(k, samples):
    counts = np.random.default_rng(k).multinomial(samples, np.random.default_rng(1).dirichlet(
        np.ones(k)))  # every cell listed, empty ones too (each Gamma(b)/Gamma(b) = 1)
    ours = est.entropy(counts, "nsb", log_states=math.log(k)) * math.log(2)
    assert ours == pytest.approx(_nsb_by_quadrature(counts, k), abs=1e-6)


def test_chao_shen_by_hand():
    counts = np.array([3, 1, 1, 2])  # N = 7, two singletons: coverage C = 1 - 2/7
    c, n = 1 - 2 / 7, 7
    p = c * counts / n
    expected = -np.sum(p * np.log(p) / (1 - (1 - p) ** n)) / math.log(2)
    assert est.entropy(counts, "chao_shen") == pytest.approx(expected, rel=1e-12)
    table = np.array([[3, 1], [1, 2]])
    by_entropies = (est.entropy(table.sum(1), "chao_shen") + est.entropy(table.sum(0), "chao_shen")
                    - est.entropy(table.ravel(), "chao_shen"))
    assert float(est.mutual_information(table, "chao_shen")) == pytest.approx(by_entropies)
    assert float(est.mutual_information(np.zeros((2, 2)), "nsb")) == 0.0
    with pytest.raises(ValueError, match="log_states"):
        est.entropy(counts, "nsb")


def _dense(n_in, n_out, activation, seed):
    w = np.random.default_rng(seed).normal(size=(n_in, n_out)).astype(np.float32) * 1.5
    out_range = (0.0, 1.0) if activation == "sigmoid" else (-1.0, 1.0)
    chain = pure.Chain(layers=(pure.Dense(activation=activation),), in_shape=(n_in,))
    return chain, ({"w": w},), dict(in_bins=16, out_bins=16, out_range=out_range)


@pytest.mark.parametrize("layer", [(4, 3, "sigmoid", 1), (6, 4, "tanh", 2)])
def test_nsb_and_chao_shen_beat_plugin_at_small_samples(layer):
    chain, params, binning = _dense(*layer)
    exact, _ = pure.ei_parts(jax.random.key(0), chain, params, method="exact", **binning)

    def mean_error(estimator, **extra):
        values = [pure.ei_parts(jax.random.key(seed), chain, params, samples=300,
                                estimator=estimator, bias_warning=None, **binning, **extra)[0]
                  for seed in range(4)]
        return float(np.mean(np.abs(np.array(values) - exact)))

    plugin = mean_error("plugin")
    # measured (8 seeds): plug-in errs by 2.5 and 9.8 bits here, NSB by 0.8 and 0.4, Chao-Shen
    # by 0.2 and 0.6; the seed-to-seed spread of each mean error is below 0.2 bits, so the
    # ordering cannot flip by chance
    assert mean_error("nsb") < plugin and mean_error("chao_shen") < plugin
    # the shuffle correction moves plug-in toward the exact value
    assert mean_error("plugin", shuffle_correction=2) < plugin


def test_shuffle_correction_reports_surrogates_and_needs_fixed_samples():
    chain, params, binning = _dense(3, 2, "sigmoid", 3)
    matrix, info = pure.ei_parts_matrix(jax.random.key(0), chain, params, samples=2000,
                                        shuffle_correction=3, error_bars=4, **binning)
    assert sum(info.confidence_interval) / 2 == pytest.approx(float(matrix.sum()))
    plain, _ = pure.ei_parts_matrix(jax.random.key(0), chain, params, samples=2000,
                                    bias_warning=None, **binning)
    assert len(info.surrogates) == 3 and info.surrogate_spread > 0
    # a surrogate is plug-in bias alone: its expectation is the expected plug-in MI of
    # independent pairs with the layer's exact margins (about 0.27 bits here; 3 surrogates of
    # spread ~0.03 each put their mean within 10% of it, 20% allowed)
    tables = exact_ei_parts_tables(params[0]["w"], activation="sigmoid", **binning)
    independent = tables.sum(-1)[..., :, None] * tables.sum(-2)[..., None, :]
    expected = est.expected_plugin_mutual_information(independent, 2000).sum()
    assert np.mean(info.surrogates) == pytest.approx(expected, rel=0.2)
    assert float(matrix.sum()) == pytest.approx(float(plain.sum()) - np.mean(info.surrogates))
    with pytest.raises(ValueError, match="shuffle_correction"):
        pure.ei_parts(jax.random.key(0), chain, params, shuffle_correction=2)
    with pytest.raises(ValueError, match="shuffle_correction"):
        pure.ei_parts(jax.random.key(0), chain, params, samples=10, shuffle_correction=-1)


def test_vector_ei_with_nsb_and_chao_shen():
    chain, params = flatten(2)
    # output = input: I(X; Y) = H(X) = 4 log2(4) = 8 bits; with 3000 samples over 256 states
    # every corrected estimator lands near it, plug-in below (each state seen ~12 times)
    for estimator in ("nsb", "chao_shen"):
        value, _ = pure.ei(jax.random.key(0), chain, params, samples=3000, in_bins=4, out_bins=4,
                           estimator=estimator)
        assert value == pytest.approx(8.0, abs=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["miller_madow", "jackknife", "nsb"])
def test_error_bar_coverage_against_exact(estimator):
    """95% batch-means intervals of EI_parts cover the exact value in most of 40 seeds at 1e4
    samples, where each corrected estimator's remaining bias is small against its error. With
    40 seeds a true coverage of 95% gives >= 33 hits with probability 0.99 (binomial).
    Chao-Shen is left out: here (1e4 samples, 99-189 occupied cells of 256 per pair, no
    singletons) it is the plug-in estimator and keeps its first-order bias, about twice the
    standard error; see `test_chao_shen_error_bars_keep_the_plugin_bias` and the guide."""
    chain, params, binning = _dense(3, 2, "sigmoid", 5)
    exact, _ = pure.ei_parts(jax.random.key(0), chain, params, method="exact", **binning)
    hits = 0
    for seed in range(40):
        _, info = pure.ei_parts(jax.random.key(seed), chain, params, samples=10_000,
                                estimator=estimator, error_bars=10, **binning)
        low, high = info.confidence_interval
        hits += low <= exact <= high
    assert hits >= 33


def test_chao_shen_is_plugin_without_singletons():
    # the reason its error bars under-cover once cells are full: with no singleton the coverage
    # C = 1, and each Horvitz-Thompson factor 1 - (1 - p)^N is 1 to within e^(-N p) (here below
    # e^-1000), so Chao-Shen is plug-in and keeps plug-in's (m - 1) / 2N bias
    table = np.random.default_rng(0).multinomial(100_000, np.full(64, 1 / 64)).reshape(8, 8)
    assert table.min() > 1000
    assert float(est.mutual_information(table, "chao_shen")) == pytest.approx(
        float(est.mutual_information(table, "plugin")), abs=1e-12)


@pytest.mark.slow
def test_chao_shen_error_bars_keep_the_plugin_bias():
    """Why Chao-Shen is not in the coverage test: on its layer at 1e4 samples Chao-Shen's mean
    error is most of the plug-in bias, which the intervals (centred on the value) do not cover.

    Tolerances from sampling error: over 40 seeds the mean error has a standard error of
    sd / sqrt(40) = 0.018 / 6.3 = 0.003 bits (sd measured over 200 seeds); the exact plug-in
    bias B = 0.044 bits (`expected_plugin_mutual_information`, no sampling) and the measured mean
    0.037 (200 seeds) lie 5 standard errors inside [B / 2, B + 3 standard errors]. Coverage:
    measured 124 of 200 (62%); 40 seeds at 62% reach the nominal band of the other estimators
    (>= 33 hits) with probability 0.006. If this fails because Chao-Shen's intervals now cover,
    move it into the test above and update docs/guide/estimates.md."""
    chain, params, binning = _dense(3, 2, "sigmoid", 5)
    exact, _ = pure.ei_parts(jax.random.key(0), chain, params, method="exact", **binning)
    tables = exact_ei_parts_tables(params[0]["w"], activation="sigmoid", **binning)
    plugin_bias = float(est.expected_plugin_mutual_information(tables, 10_000).sum()) - exact
    errors, standard_errors, hits = [], [], 0
    for seed in range(40):
        value, info = pure.ei_parts(jax.random.key(seed), chain, params, samples=10_000,
                                    estimator="chao_shen", error_bars=10, **binning)
        low, high = info.confidence_interval
        hits += low <= exact <= high
        errors.append(value - exact)
        standard_errors.append(info.standard_error)
    sem = np.std(errors, ddof=1) / math.sqrt(len(errors))
    assert plugin_bias / 2 <= np.mean(errors) <= plugin_bias + 3 * sem
    # bias b past 1.5 standard errors s: a value +- t s interval (t = 2.26) covers at most
    # Phi(t - b / s) = 78% of the time (measured b / s = 1.9: Phi(0.36) = 64%, as observed);
    # the measured mean error is 2.7 of its standard errors above 1.5 s
    assert np.mean(errors) > 1.5 * np.mean(standard_errors)
    assert hits < 33
