"""Batched sweeps: equal to single calls with the same key, chunking-invariant, clear errors.

Exactness. A sweep draws the single call's samples, runs the layer bit for bit as it does (vmapped
only where that rounds the same), and goes through the single call's chunk driver: the same
counters (host tables or device carries, `StateCounts` for joint states, or `SortedInputs`,
which gives the same count spectra) and the same compiled statistics on the same integers. So EI,
EI_parts, sensitivity and the out-of-range counts equal the single call's exactly, on the host
("numba", the CPU default) and on the device ("scatter") alike.

The bridge's sweeps below are compared within float32 rounding of the information formulas: a
pair's MI sums p (log2 c + log2 N - log2 r - log2 k) in float32, the logs up to log2(N) cancel, so
a pair carries up to ~4 log2(N) 2^-24 bits (`parts_tol`, for every pair); EI within EI_TOL, far
above the ~1e-6 bits of a float32 entropy sum.
"""
import math

import numpy as np
import pytest

from deep_ei_jax import backends, driver, kernels, pure, sweeping
from deep_ei_jax.planning import Binning

EI_TOL = 1e-4


def parts_tol(num_pairs, samples):
    return num_pairs * 4 * math.log2(samples) * 2.0 ** -24


def _sets(rng, shapes, num_sets, scale=2.0):
    sets = []
    for _ in range(num_sets):
        sets.append(tuple({"w": (scale * rng.normal(size=w)).astype(np.float32),
                           "b": rng.normal(size=w[-1] if len(w) == 2 else w[0]).astype(np.float32)}
                          for w in shapes))
    return sets


def _check_equal_to_single_calls(key, chain, sets, samples, sensitivity_samples, **binning):
    result = pure.sweep(key, chain, pure.stack_params(sets), samples=samples,
                        sensitivity_samples=sensitivity_samples, **binning)
    for k, params in enumerate(sets):
        ei, info = pure.ei(key, chain, params, samples=samples, **binning)
        parts, parts_info = pure.ei_parts(key, chain, params, samples=samples, **binning)
        sens, sens_info = pure.sensitivity(key, chain, params, samples=sensitivity_samples,
                                           **binning)
        # NaN (both) where a set's every sample (or value) was dropped: nothing counted
        np.testing.assert_array_equal(result.ei_parts[k], parts)
        np.testing.assert_array_equal(result.sensitivity[k], sens)
        np.testing.assert_array_equal(result.ei[k], ei)
        np.testing.assert_array_equal(result.degeneracy[k], result.sensitivity[k] - result.ei[k])
        assert result.dropped[k] == info.dropped
        assert result.out_of_range[k] == parts_info.out_of_range
        assert result.sensitivity_out_of_range[k] == sens_info.out_of_range
    return result


# "numba": EI and EI_parts counted on the host (the CPU default), EI against sorted input states
# or (samples beyond one call) by each set's StateCounts; "scatter", "onehot": tables on the device
@pytest.mark.parametrize("method", ["numba", "numba-state-counts", "scatter", "onehot"])
def test_sweep_equals_single_calls_one_word_states(key, method, monkeypatch):
    # 4 -> 5 sigmoid at 8 bins: X 12 bits (dense count), Y 15 bits (dense), joint 27 bits (sort)
    sorted_calls = []
    real = driver.SortedInputs
    monkeypatch.setattr(driver, "SortedInputs", lambda *a: sorted_calls.append(1) or real(*a))
    if method == "numba-state-counts":
        monkeypatch.setattr(sweeping, "sorted_call_sets", lambda *a: 0)  # no call holds all
        method = "numba"
    rng = np.random.default_rng(1)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(4,))
    result = _check_equal_to_single_calls(key, chain, _sets(rng, [(4, 5)], 5), 20_000, 700,
                                          in_range=(0, 1), out_range=(0, 1), in_bins=8,
                                          out_bins=8, method=method)
    assert result.ei.shape == (5,) and result.ei_parts_matrix.shape == (5, 4, 5)
    assert result.sensitivity_matrix.shape == (5, 4, 5)
    assert len(set(np.round(result.ei, 6))) == 5  # five different sets, five different values
    assert bool(sorted_calls) == (method == "numba" and sweeping.sorted_call_sets(1, 1, 1, 99) > 0)


@pytest.mark.filterwarnings("ignore:.*outside out_range:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:.*dropped more than 1%:RuntimeWarning")
@pytest.mark.parametrize("method", ["numba", "scatter"])
def test_sweep_equals_single_calls_two_layers_multiword_and_dropped(key, method):
    # 3 -> 4 (tanh) -> 3 (identity) at 64 in-bins / 16 out-bins, out_range narrower than the
    # outputs: X 18 bits, Y 12 bits, joint 30 bits; many samples dropped whole; then 64 out-bins
    # (joint 36 bits: two words, lexicographic sort).
    rng = np.random.default_rng(2)
    chain = pure.Chain(layers=(pure.Dense(activation="tanh"), pure.Dense()), in_shape=(3,))
    sets = _sets(rng, [(3, 4), (4, 3)], 3)
    result = _check_equal_to_single_calls(key, chain, sets, 5000, 300, in_range=(0, 1),
                                          out_range=(-1, 1), in_bins=64, out_bins=16,
                                          method=method)
    assert np.all(result.dropped > 0)
    with pytest.warns(RuntimeWarning, match=r"3 of 3 parameter sets dropped more than 1%"):
        pure.sweep(key, chain, pure.stack_params(sets), samples=5000, sensitivity_samples=300,
                   in_range=(0, 1), out_range=(-1, 1), in_bins=64, out_bins=16, method=method)
    clipped = pure.sweep(key, chain, pure.stack_params(sets), samples=5000, policy="clip",
                         sensitivity_samples=300, in_range=(0, 1), out_range=(-1, 1), in_bins=64,
                         out_bins=16, method=method)
    np.testing.assert_array_equal(clipped.dropped, 0)  # as single calls: nothing dropped
    _check_equal_to_single_calls(key, chain, sets, 5000, 300, in_range=(0, 1), out_range=(-3, 3),
                                 in_bins=64, out_bins=64, method=method)


def test_sweep_equals_single_calls_conv(key):
    rng = np.random.default_rng(3)
    chain = pure.Chain(layers=(pure.Conv2d(activation="sigmoid"),), in_shape=(1, 2, 2))
    sets = [({"w": rng.normal(size=(2, 1, 2, 2)).astype(np.float32),
              "b": rng.normal(size=2).astype(np.float32)},) for _ in range(3)]
    _check_equal_to_single_calls(key, chain, sets, 3000, 200, in_range=(0, 1), out_range=(0, 1),
                                 in_bins=4, out_bins=4)


def test_chunking_over_k_gives_identical_results(key, monkeypatch):
    rng = np.random.default_rng(4)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(3,))
    stacked = pure.stack_params(_sets(rng, [(3, 2)], 5))
    binning = dict(in_range=(0, 1), out_range=(0, 1), in_bins=8, out_bins=8, samples=3000,
                   sensitivity_samples=200)
    whole = pure.sweep(key, chain, stacked, **binning)
    by_two = pure.sweep(key, chain, stacked, max_batch=2, **binning)      # 2 + 2 + 1 (padded)
    calls = []
    real_batches = driver.batches  # the compiled calls (of either path) take one batch each
    monkeypatch.setattr(driver, "batches", lambda *a: (calls.append(1) or batch
                                                       for batch in real_batches(*a)))
    pure.sweep(key, chain, stacked, **binning)
    unsplit, calls[:] = len(calls), []
    tight = pure.sweep(key, chain, stacked, memory_budget=500_000, **binning)
    assert len(calls) > unsplit  # the budget split K over several calls
    for other in (by_two, tight):
        for name in ("ei", "ei_parts", "sensitivity", "degeneracy", "ei_parts_matrix",
                     "sensitivity_matrix", "dropped"):
            np.testing.assert_array_equal(getattr(whole, name), getattr(other, name), err_msg=name)
    assert len(whole.records()) == 5 and whole.records()[4]["index"] == 4


def test_measures_subset_and_no_recompile_for_new_weights(key):
    rng = np.random.default_rng(5)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(2,))
    binning = dict(in_range=(0, 1), out_range=(0, 1), in_bins=4, out_bins=4, samples=2000,
                   sensitivity_samples=100, measures=("sensitivity",))
    first = pure.sweep(key, chain, pure.stack_params(_sets(rng, [(2, 2)], 2)), **binning)
    assert first.ei is None and first.ei_parts is None and first.degeneracy is None
    assert first.sensitivity.shape == (2,)
    programs = (kernels.single_input_step, kernels.host_single_input_chunk)  # device / host
    traces = [program._cache_size() for program in programs]
    assert sum(traces) > 0
    pure.sweep(key, chain, pure.stack_params(_sets(rng, [(2, 2)], 2)), **binning)
    assert [program._cache_size() for program in programs] == traces


def test_stack_params_names_the_set_that_differs():
    good = ({"w": np.zeros((4, 5), np.float32)},)
    bad = ({"w": np.zeros((4, 6), np.float32)},)
    with pytest.raises(ValueError, match=r"params_list\[2\] differs from params_list\[0\]: params"
                                         r"\[0\]\['w'\] has shape \(4, 6\); expected \(4, 5\)"):
        pure.stack_params([good, good, bad])
    with pytest.raises(ValueError, match=r"params_list\[1\] has a different structure"):
        pure.stack_params([good, ({"w": good[0]["w"], "b": np.zeros(5)},)])
    with pytest.raises(ValueError, match="at least one"):
        pure.stack_params([])


def test_sweep_method_numba_needs_numba(key, monkeypatch):
    from deep_ei_jax import histogram
    chain = pure.Chain(layers=(pure.Dense(),), in_shape=(2,))
    stacked = ({"w": np.zeros((3, 2, 2), np.float32)},)
    monkeypatch.setattr(histogram, "numba", None)
    with pytest.raises(ValueError, match=r"method='numba' needs numba: pip install numba"):
        pure.sweep(key, chain, stacked, method="numba", samples=100)


def test_sweep_argument_errors(key):
    chain = pure.Chain(layers=(pure.Dense(),), in_shape=(2,))
    stacked = ({"w": np.zeros((3, 2, 2), np.float32), "b": np.zeros((2, 2), np.float32)},)
    with pytest.raises(ValueError, match=r"same leading size K .*params\[0\]\['b'\] has 2 but "
                                         r"params\[0\]\['w'\] has 3"):
        pure.sweep(key, chain, stacked, samples=100)
    stacked = ({"w": np.zeros((3, 2, 2), np.float32)},)
    with pytest.raises(ValueError, match="out_range must be fixed in a sweep"):
        pure.sweep(key, chain, stacked, out_range="dynamic", samples=100)
    with pytest.raises(ValueError, match=r"measures must be names from .*got 'vector'"):
        pure.sweep(key, chain, stacked, measures=("vector",), samples=100)
    with pytest.raises(ValueError, match=r"one entry per layer of the chain \(1\); got 2"):
        pure.sweep(key, chain, stacked + stacked, samples=100)
    with pytest.raises(ValueError, match="memory_budget"):
        pure.sweep(key, chain, stacked, samples=100, memory_budget=10)


# ---------------------------------------------------------------- the torch side

torch = pytest.importorskip("torch")
nn = torch.nn


def iris_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 5), nn.Sigmoid(),
                         nn.Linear(5, 3), nn.Sigmoid())


SETTINGS = dict(samples=4000, sensitivity_samples=300, in_bins=8, out_bins=8)


@pytest.fixture(scope="module")
def iris_records():
    import deep_ei_jax as dei
    models = [iris_net(s) for s in range(3)]
    return models, dei.sweep(models, torch.zeros((1, 4)), steps=[0, 50, 100], seed=3, **SETTINGS)


def test_bridge_sweep_equals_single_calls(iris_records):
    import deep_ei_jax as dei
    models, records = iris_records
    assert len(records) == 9
    assert [(r["model"], r["layer"]) for r in records[:4]] == [(0, "0"), (0, "2"), (0, "4"),
                                                               (1, "0")]
    for record in records:
        model = models[record["model"]]
        layer = model[int(record["layer"])]
        topology = dei.topology_of(model, torch.zeros((1, 4)))
        ei, parts = dei.vector_and_pairwise_ei(layer, topology, samples=4000, seed=3, in_bins=8,
                                               out_bins=8)
        sens = dei.sensitivity_of_layer(layer, topology, samples=300, seed=3, in_bins=8,
                                        out_bins=8)
        assert abs(record["ei"] - ei) < EI_TOL
        assert abs(record["ei_parts"] - parts) <= parts_tol(25, 4000)
        assert abs(record["sensitivity"] - sens) <= parts_tol(25, 300)
        assert record["degeneracy"] == record["sensitivity"] - record["ei"]
        assert record["step"] == [0, 50, 100][record["model"]]
        assert record["samples"] == 4000 and record["sensitivity_samples"] == 300


def test_bridge_sweep_state_dicts_equal_models(iris_records):
    import deep_ei_jax as dei
    models, records = iris_records
    state_dicts = [m.state_dict() for m in models]
    again = dei.sweep(state_dicts, torch.zeros((1, 4)), model=iris_net(99), steps=[0, 50, 100],
                      seed=3, **SETTINGS)
    assert again == records
    mixed = dei.sweep([models[0], state_dicts[1]], torch.zeros((1, 4)), layers=["2"],
                      measures=["ei_parts"], seed=3, **SETTINGS)
    assert [r["layer"] for r in mixed] == ["2", "2"]
    assert set(mixed[0]) >= {"ei_parts"} and "ei" not in mixed[0]
    # another program (other measures, K): the same counts, float32 MI fused differently
    assert abs(mixed[1]["ei_parts"] - records[4]["ei_parts"]) <= parts_tol(25, 4000)


def test_bridge_sweep_dataframe(iris_records):
    pandas = pytest.importorskip("pandas")
    import deep_ei_jax as dei
    frame = dei.to_dataframe(iris_records[1])
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 9
    assert {"model", "step", "layer", "ei", "ei_parts", "sensitivity", "degeneracy",
            "samples"} <= set(frame.columns)


def test_bridge_sweep_names_the_model_that_differs():
    import deep_ei_jax as dei
    wider = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 5), nn.Sigmoid(),
                          nn.Linear(5, 3), nn.Sigmoid())
    x = torch.zeros((1, 4))
    with pytest.raises(ValueError, match=r"models_or_state_dicts\[2\] differs from "
                                         r"models_or_state_dicts\[0\] at layer '0': it is "
                                         r"Linear\(4->6\); expected Linear\(4->5\)"):
        dei.sweep([iris_net(0), iris_net(1), wider], x, samples=100)
    with pytest.raises(ValueError, match=r"models_or_state_dicts\[1\] does not fit the model's "
                                         r"architecture"):
        dei.sweep([iris_net(0).state_dict(), wider.state_dict()], x, model=iris_net(0),
                  samples=100)
    with pytest.raises(ValueError, match="only state dicts: pass model="):
        dei.sweep([iris_net(0).state_dict()], x, samples=100)
    with pytest.raises(ValueError, match=r"layers: 'fc9' is not a measurable module"):
        dei.sweep([iris_net(0)], x, layers=["fc9"], samples=100)
    with pytest.raises(TypeError, match="models_or_state_dicts must be a list"):
        dei.sweep(iris_net(0), x, samples=100)
    tanh_last = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 5), nn.Sigmoid(),
                              nn.Linear(5, 3), nn.Tanh())
    with pytest.raises(ValueError, match=r"models_or_state_dicts\[1\] differs .* at layer '4': "
                                         r"its layers are"):
        dei.sweep([iris_net(0), tanh_last], x, samples=100)


def test_bridge_sweep_skips_unmeasurable_layers_with_a_warning():
    import deep_ei_jax as dei
    class Branching(nn.Sequential):   # torch.export cannot trace it: hooks only
        def forward(self, x):
            y = super().forward(x)
            return y if bool(y.sum() > 0) else -y

    model = Branching(nn.Linear(3, 2), nn.Sigmoid(), nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.eval()
    with pytest.warns(RuntimeWarning, match=r"sweep skips layer '2'"):
        records = dei.sweep([model], torch.zeros((2, 3)), measures=["ei_parts"], samples=1000,
                            in_bins=4, out_bins=4)
    assert [r["layer"] for r in records] == ["0"]


def test_host_plan_holds_every_sample_within_the_memory_budget(key):
    # the paper's 1e7 samples of a 5 -> 5 layer: one set per call within the default 1 GiB (its
    # estimate ~0.8 GB; measured peak RSS 1.39 GB with the ~0.4 GB process); a budget that cannot
    # hold the shared inputs and one set (780 MiB) falls back to StateCounts over chunks
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(5,))
    params0 = ({"w": np.ones((5, 5), np.float32)},)
    def plan(budget):
        return sweeping.plan_sweep(
            key, chain, params0, Binning(in_bins=8, out_bins=8, method=backends.HOST,
                                         memory_budget=budget),
            samples=10 ** 7, sensitivity_samples=100, names=sweeping.MEASURES, num_sets=50,
            max_batch=None)
    big, _, _, batch = plan(sweeping.DEFAULT_CALL_MEMORY_BUDGET)
    assert big.sorted_states and batch == 1 and big.num_chunks == 1
    small, _, _, _ = plan(780 * 2 ** 20)
    assert not small.sorted_states and small.num_chunks > 1
    assert sweeping.sorted_call_sets(10 ** 5, 4, 5, 2 ** 30) > 50
