#!/usr/bin/env bash
# The GPU check, one prepared script (a few minutes end to end on an H100/H200):
#   1. which JAX devices there are;
#   2. the kernel and measure tests on the GPU (one-hot matmul counting is the GPU default);
#   3. compare_backends for deep_ei_jax on CPU and GPU (deep-ei itself is not installed there);
#   4. W6 (784 -> 1000 sigmoid, 64 bins) at 1e6 samples on the GPU: time and pair-samples/s.
# Run from the repository root:  bash benchmarks/gpu_check.sh [--smoke]
# --smoke shrinks every step so the script can be checked on a CPU-only machine.
# Results go to stdout and, when $OUT is set, to $OUT/gpu_check.log.
set -uo pipefail
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
LOG=${OUT:+$OUT/gpu_check.log}; LOG=${LOG:-/dev/null}
status=0
step() { echo "== $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; local rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || status=$rc; }

step "devices"
run "$PY" -c "import jax; print(jax.__version__, jax.devices())"

step "tests on the default device"
if [ "$SMOKE" = 1 ]; then
  run "$PY" -m pytest -q -x tests/test_kernels.py -k "pairwise_counts or scatter_and_onehot"
else
  run "$PY" -m pytest -q -x tests/test_kernels.py tests/test_measures.py
fi

step "compare_backends (deep_ei_jax on cpu and gpu)"
if [ "$SMOKE" = 1 ]; then
  run "$PY" -m benchmarks.compare_backends --backends cpu,gpu --cases W4 --repeats 1
else
  run "$PY" -m benchmarks.compare_backends --backends cpu,gpu --cases W1,W2,W3,W4,W5,W6,paper
fi

step "W6 at scale on the default device"
SAMPLES=1000000; [ "$SMOKE" = 1 ] && SAMPLES=2000
run "$PY" - "$SAMPLES" "$SMOKE" <<'PYEOF'
import json, sys, time
import jax, numpy as np
from deep_ei_jax import pure
samples, smoke = int(sys.argv[1]), sys.argv[2] == "1"
n_in, n_out = (784, 1000) if not smoke else (64, 32)
rng = np.random.default_rng(0)
chain = pure.Chain(layers=(pure.Dense(activation="sigmoid"),), in_shape=(n_in,))
params = ({"w": (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)},)
kwargs = dict(in_range=(0, 1), out_range=(0, 1), in_bins=64, out_bins=64, samples=samples)
for label, key in (("first call", 0), ("warm", 1)):
    start = time.perf_counter()
    value, info = pure.ei_parts(jax.random.key(key), chain, params, **kwargs)
    seconds = time.perf_counter() - start
    print(json.dumps({"name": "W6-large", "call": label, "sizes": f"{n_in}->{n_out}",
                      "samples": samples, "device": str(jax.devices()[0]),
                      "run_s": round(seconds, 3), "value": round(value, 3),
                      "pair_samples_per_s": round(samples * n_in * n_out / seconds)}))
PYEOF
exit $status
