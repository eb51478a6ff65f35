"""Counting, binning and information kernels against NumPy oracles on the same samples."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deep_ei_jax import backends, estimators, planning
from deep_ei_jax.binning import bin_indices
from deep_ei_jax.histogram import StateCounts, join_states, pack_states, pairwise_counts, state_bits
from deep_ei_jax.information import entropy, mutual_information, mutual_information_standard_error


def numpy_mi(table):
    """Plug-in MI in bits, written independently of the library."""
    table = np.asarray(table, np.float64)
    n = table.sum()
    if n == 0:
        return 0.0
    p = table / n
    px, py = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log2(p[nz] / (px @ py)[nz])))


def random_bins(rng, samples, n_in, n_out, bx, by):
    x = rng.integers(0, bx, (samples, n_in)).astype(np.int32)
    y = ((x[:, :1] + rng.integers(0, 3, (samples, n_out))) % by).astype(np.int32)
    valid = rng.random((samples, n_out)) > 0.1
    return x, y, valid


@pytest.mark.parametrize("method", ["scatter", "onehot"])
@pytest.mark.parametrize("jitted", [False, True])
def test_pairwise_counts_match_histogram2d(method, jitted):
    rng = np.random.default_rng(1)
    x, y, valid = random_bins(rng, 3000, 3, 4, 5, 7)
    def fn(a, b, c):
        return pairwise_counts(a, b, c, 5, 7, method)
    if jitted:
        fn = jax.jit(fn)
    counts = np.asarray(fn(x, y, valid))
    assert counts.dtype == np.int32
    for a in range(3):
        for b in range(4):
            keep = valid[:, b]
            expected, _, _ = np.histogram2d(x[keep, a], y[keep, b], bins=(5, 7),
                                            range=((0, 5), (0, 7)))
            np.testing.assert_array_equal(counts[a, b], expected.astype(np.int64))


@pytest.mark.parametrize("backend", list(backends.REGISTRY.values()), ids=str)
def test_every_backend_counts_the_pairwise_tables(backend):
    """Through the counter interface the driver uses (new counts, the in-kernel step, the host's
    consume of a sample range, the tables view or, for the samples backend, its statistics),
    every backend gives np.histogram2d's counts."""
    rng = np.random.default_rng(3)
    x, y, valid = random_bins(rng, 3000, 3, 4, 5, 7)
    counts = backend.new_pair_counts((3, 4), 5, 7)
    step = jax.jit(lambda c, a, b, v: backend.count_in_kernel(c, a, b, v, 5, 7))
    # host counts stay on the host: the kernel's carry is then a placeholder it leaves alone
    carry, host_bins = step(jnp.zeros((), jnp.int32) if backend.on_host else counts, x, y, valid)
    assert bool(host_bins) == backend.on_host
    if not backend.on_host:
        counts = carry
    else:  # two ranges: the host counter's sample bounds
        backend.consume(counts, host_bins, 7, 0, 1000)
        backend.consume(counts, host_bins, 7, 1000, 3000)
    expected = np.zeros((3, 4, 5, 7), np.int64)
    for a in range(3):
        for b in range(4):
            keep = valid[:, b]
            expected[a, b], _, _ = np.histogram2d(x[keep, a], y[keep, b], bins=(5, 7),
                                                  range=((0, 5), (0, 7)))
    if backend.by_samples:
        with pytest.raises(TypeError, match="no tables"):
            backend.tables(counts, 5, 7)
    else:
        np.testing.assert_array_equal(np.asarray(backend.tables(counts, 5, 7)), expected)
    if backend.on_host:  # the entries marked left out, per table (every input sees them all)
        np.testing.assert_array_equal(backend.left_out(counts, 5, 7), np.broadcast_to(
            (~np.asarray(valid)).sum(axis=0), (3, 4)))
    # and the statistics the driver asks of them: plug-in MI in bits, the first-order bias.
    # The device backends reduce in float32 (a table of N = 3000 samples: error ~1e-6 bits).
    counting = planning.Counting(in_bins=5, out_bins=7, policy="drop", backend=backend,
                                 block_size=4, pairs=True, groups=())
    mi, _, _, bias = backend.statistics(counting, planning.Statistics(), counts)
    np.testing.assert_allclose(np.asarray(mi), estimators.mutual_information(expected),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bias), estimators.miller_madow_bias(expected),
                               rtol=0, atol=1e-6)


def test_backend_registry_and_resolution():
    assert backends.METHODS == ("auto",) + tuple(backends.REGISTRY)
    for name, backend in backends.REGISTRY.items():
        assert backends.resolve(name) is backend and backend.name == name
    assert backends.resolve("auto") is backends.default_backend()
    # a single call's sensitivity counts few samples per input: XLA's scatter on a CPU
    assert backends.resolve("auto", one_input=True) is (
        backends.SCATTER if jax.default_backend() == "cpu" else backends.ONEHOT)
    assert backends.device_fallback(backends.HOST) is backends.SCATTER
    assert backends.device_fallback(backends.ONEHOT) is backends.ONEHOT
    with pytest.raises(ValueError, match="method must be one of"):
        backends.resolve("fast")


def test_backends_are_named_in_the_registry_only():
    """Code asks a backend object, never compares method names: the host backend's name is a
    string literal at most twice in the package (the registry)."""
    import pathlib
    import tokenize
    import deep_ei_jax
    sites = []
    for path in sorted(pathlib.Path(deep_ei_jax.__file__).parent.rglob("*.py")):
        with open(path, "rb") as source:
            sites += [(path.name, token.start[0]) for token in tokenize.tokenize(source.readline)
                      if token.type == tokenize.STRING and token.string.strip("'\"") == "numba"]
    assert len(sites) <= 2 and all(name == "backends.py" for name, _ in sites), sites


def test_scatter_and_onehot_identical():
    rng = np.random.default_rng(2)
    x, y, valid = random_bins(rng, 5000, 6, 5, 16, 16)
    np.testing.assert_array_equal(pairwise_counts(x, y, valid, 16, 16, "scatter"),
                                  pairwise_counts(x, y, valid, 16, 16, "onehot"))


def test_binning_edges_inclusive_and_policies():
    values = jnp.array([0.0, 0.5, 1.0, 1.0 + 1e-6, -1e-6, jnp.nan, 0.999999])
    idx, in_range = bin_indices(values, 0.0, 1.0, 4, "drop")
    np.testing.assert_array_equal(in_range, [True, True, True, False, False, False, True])
    # the top edge is in bin 3
    np.testing.assert_array_equal(np.asarray(idx)[[0, 1, 2, 6]], [0, 2, 3, 3])
    clipped, _ = bin_indices(values, 0.0, 1.0, 4, "clip")
    np.testing.assert_array_equal(np.asarray(clipped)[[3, 4]], [3, 0])
    with pytest.raises(ValueError, match="policy must be one of"):
        bin_indices(values, 0.0, 1.0, 4, "wrap")


def test_binning_matches_numpy_histogram():
    rng = np.random.default_rng(3)
    values = rng.uniform(-1, 3, 10000).astype(np.float32)
    idx, keep = bin_indices(jnp.asarray(values), -1.0, 3.0, 13)
    ours = np.bincount(np.asarray(idx)[np.asarray(keep)], minlength=13)
    expected, _ = np.histogram(values, bins=13, range=(-1, 3))
    # float32 vs float64 edges may move a value sitting on an edge by one bin
    assert np.abs(ours - expected).sum() <= 2


def test_per_neuron_bins():
    values = jnp.array([[0.1, 0.1], [0.9, 0.9]])
    idx, _ = bin_indices(values, jnp.array([0.0, 0.0]), jnp.array([1.0, 1.0]), jnp.array([2, 10]))
    np.testing.assert_array_equal(idx, [[0, 1], [1, 9]])


def test_pack_states_is_lossless():
    rng = np.random.default_rng(4)
    for bins, width in ((8, 5), (64, 7), (2, 40), (1000, 3)):
        rows = rng.integers(0, bins, (500, width)).astype(np.int32)
        rows[1] = rows[0]
        words = np.asarray(pack_states(jnp.asarray(rows), bins))
        _, row_ids = np.unique(rows, axis=0, return_inverse=True)
        _, word_ids = np.unique(words, axis=0, return_inverse=True)
        # equal rows <-> equal words: the two partitions coincide
        assert len(set(zip(row_ids.ravel(), word_ids.ravel()))) == len(set(row_ids.ravel()))
        assert len(set(row_ids.ravel())) == len(set(word_ids.ravel()))


@pytest.mark.parametrize("width,bins", [(3, 8), (12, 8), (30, 64)])
def test_state_counts_match_unique(width, bins):
    rng = np.random.default_rng(5)
    rows = rng.integers(0, bins, (4000, width)).astype(np.int32)
    rows[rng.random(4000) < 0.5] = rows[0]
    valid = rng.random(4000) > 0.2
    words = np.asarray(pack_states(jnp.asarray(rows), bins))
    counter = StateCounts(state_bits(width, bins))
    counter.add(words[:1500], valid[:1500])  # merged across two chunks
    counter.add(words[1500:], valid[1500:])
    _, expected = np.unique(rows[valid], axis=0, return_counts=True)
    np.testing.assert_array_equal(np.sort(counter.counts()), np.sort(expected))
    assert counter.total == valid.sum()


@pytest.mark.parametrize("with_numba", [True, False])
@pytest.mark.parametrize("bits", [27, 40])  # one word / two words per state
def test_state_counts_exact_through_table_growth(with_numba, bits):
    """Many distinct states with repeats, in uneven chunks and merged across buffer flushes: the
    radix-sorted counts (numba) and np.unique's (without numba) equal a direct count."""
    rng = np.random.default_rng(6)
    keys = rng.integers(0, 2 ** bits, 150_000, dtype=np.uint64)
    keys = keys[rng.integers(0, keys.size, 400_000)]  # repeats, so counts above 1
    words = np.stack([keys >> np.uint64(32), keys & np.uint64(2 ** 32 - 1)], 1).astype(np.uint32)
    words = words[:, 1:] if bits <= 32 else words
    valid = rng.random(keys.size) > 0.1
    counter = StateCounts(bits, buffer_rows=100_000, compiled=with_numba)  # several merges
    assert counter.compiled == with_numba
    for lo, hi in [(0, 1000), (1000, 250_000), (250_000, 400_000)]:
        counter.add(words[lo:hi], valid[lo:hi])
    _, expected = np.unique(keys[valid], return_counts=True)
    np.testing.assert_array_equal(np.sort(counter.counts()), np.sort(expected))
    assert counter.total == valid.sum()


@pytest.mark.parametrize("with_numba", [True, False])
@pytest.mark.parametrize("bits", [12, 30, 40])  # dense / one-word sparse / two-word sparse
def test_state_counts_absorb_equals_counting_together(with_numba, bits):
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 2 ** min(bits, 14), 20_000, dtype=np.uint64) << np.uint64(bits - 14) \
        if bits > 14 else rng.integers(0, 2 ** bits, 20_000, dtype=np.uint64)
    words = np.stack([keys >> np.uint64(32), keys & np.uint64(2 ** 32 - 1)], 1).astype(np.uint32)
    words = words[:, 1:] if bits <= 32 else words
    valid = rng.random(keys.size) > 0.1
    together, first, second, empty = (StateCounts(bits, compiled=with_numba) for _ in range(4))
    together.add(words, valid)
    first.add(words[:7000], valid[:7000])
    second.add(words[7000:], valid[7000:])
    first.absorb(second)
    empty.absorb(first)  # into a counter that has nothing yet
    for counter in (first, empty):
        np.testing.assert_array_equal(np.sort(counter.counts()), np.sort(together.counts()))
        assert counter.total == together.total == valid.sum()


def test_join_states_distinguishes_pairs():
    x = jnp.array([[1], [2], [1]], jnp.uint32)
    y = jnp.array([[2], [1], [2]], jnp.uint32)
    joint = np.asarray(join_states(x, 2, y, 2))
    assert joint[0, 0] == joint[2, 0] and joint[0, 0] != joint[1, 0]


@pytest.mark.parametrize("jitted", [False, True])
def test_mutual_information_matches_numpy(jitted):
    rng = np.random.default_rng(6)
    tables = rng.integers(0, 50, (4, 6, 9)) * (rng.random((4, 6, 9)) > 0.3)
    fn = jax.jit(mutual_information) if jitted else mutual_information
    ours = np.asarray(fn(jnp.asarray(tables, jnp.int32)))
    expected = [numpy_mi(t) for t in tables]
    np.testing.assert_allclose(ours, expected, atol=2e-6)
    np.testing.assert_allclose(mutual_information(tables), expected, atol=1e-12)  # NumPy, float64
    assert float(mutual_information(np.zeros((3, 3), np.int64))) == 0.0


def test_entropy_and_identity_table():
    diagonal = np.diag(np.full(16, 10))
    assert mutual_information(diagonal) == pytest.approx(4.0, abs=1e-12)
    assert entropy(np.full(8, 3)) == pytest.approx(3.0, abs=1e-12)
    assert mutual_information_standard_error(diagonal) == pytest.approx(0.0, abs=1e-12)


def test_standard_error_matches_spread_over_seeds():
    """The delta-method standard error agrees with the spread of plug-in MI over resamples."""
    rng = np.random.default_rng(7)
    p = rng.random((6, 6)) ** 3
    p /= p.sum()
    estimates, errors = [], []
    for _ in range(300):
        table = rng.multinomial(5000, p.ravel()).reshape(6, 6)
        estimates.append(mutual_information(table))
        errors.append(mutual_information_standard_error(table))
    # the spread of 300 draws is known to about 1/sqrt(2*300) = 4% relative
    assert np.std(estimates) == pytest.approx(np.mean(errors), rel=0.2)


def test_pairwise_counts_do_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def count(x, y, v):
        return pairwise_counts(x, y, v, 4, 4, "scatter")
    rng = np.random.default_rng(8)
    for _ in range(3):
        x, y, valid = random_bins(rng, 100, 2, 2, 4, 4)
        count(x, y, valid)


def test_default_backend_without_numba(monkeypatch):
    from deep_ei_jax import histogram
    assert backends.default_backend() is backends.HOST  # the test install has numba
    monkeypatch.setattr(histogram, "numba", None)  # an install without numba
    assert backends.default_backend() is backends.SCATTER
    with pytest.raises(ValueError, match="method='numba' needs numba"):
        backends.resolve("numba", require_available=True)
    with pytest.raises(ValueError, match="method='numba' needs numba"):
        histogram.add_pairwise_counts_host(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8),
                                           2, np.zeros((1, 1, 6), np.int32))


@pytest.mark.parametrize("parallel_from", [2 ** 26, 1])
# inputs / outputs one at a time or in pairs (the scratch-table limits that allow each)
@pytest.mark.parametrize("inputs_paired_up_to", [0, 2 ** 18])
@pytest.mark.parametrize("outputs_paired_up_to", [0, 2 ** 15])
@pytest.mark.parametrize("num_in", [4, 5])  # with 5, the last input is counted alone
@pytest.mark.parametrize("num_out", [3, 4])  # with 3, the last output is counted alone
def test_host_counter_matches_scatter(monkeypatch, parallel_from, inputs_paired_up_to,
                                      outputs_paired_up_to, num_in, num_out):
    from deep_ei_jax import histogram
    from deep_ei_jax.histogram import add_pairwise_counts_host
    monkeypatch.setattr(histogram, "PARALLEL_PAIR_SAMPLES", parallel_from)  # serial and parallel
    monkeypatch.setattr(histogram, "PAIRED_TABLE_BYTES", inputs_paired_up_to)
    monkeypatch.setattr(histogram, "PAIRED_OUTPUTS_BYTES", outputs_paired_up_to)
    rng = np.random.default_rng(9)
    x, y, valid = random_bins(rng, 4000, num_in, num_out, 8, 6)
    tables = np.zeros((num_in, num_out, 8 * 7), np.int32)
    y_marked = np.where(valid, y, 6)  # the sentinel bin leaves an entry out
    add_pairwise_counts_host(x.T.astype(np.uint8), y_marked.T.astype(np.uint8), 6, tables)
    expected = pairwise_counts(x, y, valid, 8, 6, "scatter")
    np.testing.assert_array_equal(tables.reshape(num_in, num_out, 8, 7)[..., :6], expected)
    assert tables.reshape(num_in, num_out, 8, 7)[..., 6].sum() == num_in * (~valid).sum()

    # a sample range counts those rows only, added to what is there
    add_pairwise_counts_host(x.T.astype(np.uint8), y_marked.T.astype(np.uint8), 6, tables,
                             1000, 3500)
    expected = expected + pairwise_counts(x[1000:3500], y[1000:3500], valid[1000:3500], 8, 6,
                                          "scatter")
    np.testing.assert_array_equal(tables.reshape(num_in, num_out, 8, 7)[..., :6], expected)
    with pytest.raises(ValueError, match="first..stop must lie in 0..4000; got 10..4001"):
        add_pairwise_counts_host(x.T.astype(np.uint8), y_marked.T.astype(np.uint8), 6, tables,
                                 10, 4001)


@pytest.mark.parametrize("shape", [(1,), (1024,), (1024, 7), (3, 5, 2)])
def test_fast_uniform_is_jax_uniform_bit_for_bit(shape):
    from deep_ei_jax.sampling import fast_uniform as _uniform
    for seed in range(3):
        key = jax.random.fold_in(jax.random.key(seed), 11)
        ours = jax.jit(lambda k: _uniform(k, shape, -1.5, 2.0))(key)
        np.testing.assert_array_equal(ours, jax.random.uniform(key, shape, minval=-1.5,
                                                               maxval=2.0))
    # the default key takes the unrolled hash, not JAX's (rolled, slower on a CPU) primitive
    assert "random_bits" not in str(jax.make_jaxpr(lambda k: _uniform(k, shape, 0.0, 1.0))(key))
    other = jax.random.key(0, impl="rbg")  # other key kinds are handed to jax.random.uniform
    np.testing.assert_array_equal(_uniform(other, shape, 0.0, 1.0),
                                  jax.random.uniform(other, shape))


def _spectrum_of(states):
    """(values, multiplicities) of the counts of the distinct rows of `states`, by NumPy."""
    from deep_ei_jax.estimators import count_spectrum
    if len(states) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, counts = np.unique(states, axis=0, return_counts=True)
    return count_spectrum(counts)


@pytest.mark.parametrize("num_in, in_bins, samples", [
    (4, 8, 5000),    # 12-bit input states, ~1 sample each: the small-group path
    (2, 8, 5000),    # 64 input states, ~80 samples each: the dense-table path
    (3, 64, 3000),   # 18-bit keys: the two-digit radix sort
    (1, 2, 7),       # tiny
])
def test_sorted_inputs_spectra_match_unique(num_in, in_bins, samples):
    from deep_ei_jax.histogram import SortedInputs
    rng = np.random.default_rng(num_in + samples)
    num_out, out_bins = 3, 4
    x = rng.integers(0, in_bins, (num_in, samples)).astype(np.uint8)
    # few distinct outputs (as saturating activations give), some samples left out
    y = rng.integers(0, 2, (num_out, samples)).astype(np.uint8)
    y[rng.random((num_out, samples)) < 0.03] = out_bins
    inputs = SortedInputs(x, samples - 2, in_bins, num_out * 2)
    for trial in range(2):  # the scratch tables are left clean for the next set
        codes = y if trial == 0 else np.roll(y, 1, axis=1)
        got = inputs.spectra(codes, out_bins)
        stop = samples - 2
        keep = np.all(codes[:, :stop] < out_bins, axis=0)
        xs, ys = x[:, :stop].T[keep], codes[:, :stop].T[keep]
        for have, want in zip(got, (_spectrum_of(xs), _spectrum_of(ys),
                                    _spectrum_of(np.concatenate([xs, ys], axis=1)))):
            np.testing.assert_array_equal(have[0], want[0])
            np.testing.assert_array_equal(have[1], want[1])


def test_sorted_inputs_fit_limits():
    from deep_ei_jax.histogram import sorted_inputs_fit
    assert sorted_inputs_fit(10, 8, 8, 8)           # 30-bit inputs, 24-bit outputs
    assert not sorted_inputs_fit(11, 8, 5, 8)       # 33-bit inputs
    assert not sorted_inputs_fit(4, 8, 9, 8)        # 27-bit outputs


def test_dense_elementwise_rounds_the_same_under_vmap():
    from deep_ei_jax import pure
    from deep_ei_jax.layers import ELEMENTWISE_FAN_IN
    rng = np.random.default_rng(5)
    x = rng.random((4096, 5), dtype=np.float32)
    chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(5,))
    w = (3 * rng.normal(size=(7, 5, 4))).astype(np.float32)
    b = rng.normal(size=(7, 4)).astype(np.float32)
    single = jax.jit(lambda p: pure.apply(chain, p, x))
    batched = jax.jit(jax.vmap(lambda w, b: pure.apply(chain, ({"w": w, "b": b},), x)))(w, b)
    for k in range(7):
        one = np.asarray(single(({"w": w[k], "b": b[k]},)))
        np.testing.assert_array_equal(np.asarray(batched[k]), one)  # bit for bit
        # and the matmul's value to float32 rounding of 5 products
        np.testing.assert_allclose(one, 1 / (1 + np.exp(-(x @ w[k] + b[k]))), rtol=0, atol=1e-5)
    assert ELEMENTWISE_FAN_IN >= 5
