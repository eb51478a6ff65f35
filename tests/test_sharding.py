"""Sharding samples over devices (shard_map + psum) and over processes (jax.distributed).

Runs in subprocesses: XLA_FLAGS must be set before JAX starts to get 4 CPU devices.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

FOUR_DEVICES = r"""
import json, jax, numpy as np
import torch
from torch import nn
import deep_ei_jax as dei
from deep_ei_jax import pure
assert len(jax.devices()) == 4
rng = np.random.default_rng(0)
chain = pure.Chain((pure.Dense(activation="sigmoid"),), (6,))
params = ({"w": rng.normal(size=(6, 4)).astype(np.float32)},)
kw = dict(in_range=(0, 1), out_range=(0, 1), in_bins=16, out_bins=16, samples=30_001)
out = {}
one, _ = pure.ei_parts_matrix(jax.random.key(0), chain, params, devices=1, **kw)
for devices in (None, 3, jax.devices()[1:3]):
    m, _ = pure.ei_parts_matrix(jax.random.key(0), chain, params, devices=devices, **kw)
    out[f"matrix {devices if not isinstance(devices, list) else 'list'}"] = bool((m == one).all())
out["scatter one device == numba"] = bool((pure.ei_parts_matrix(
    jax.random.key(0), chain, params, devices=1, method="scatter", **kw)[0] == one).all())
groups = [((0, 1), (2,)), ((3,), (0, 1, 2)), (tuple(range(6)), tuple(range(4)))]
g1, i1 = pure.eis_between_groups(jax.random.key(0), chain, params, groups, devices=1, **kw)
g4, i4 = pure.eis_between_groups(jax.random.key(0), chain, params, groups, **kw)
out["groups"] = g1 == g4 and i1.samples == i4.samples
(v1, p1), _ = pure.ei_and_ei_parts(jax.random.key(0), chain, params, devices=1, **kw)
(v4, p4), _ = pure.ei_and_ei_parts(jax.random.key(0), chain, params, devices=4, **kw)
out["vector and pairwise"] = (v1, p1) == (v4, p4)
a, _ = pure.ei_parts(jax.random.key(0), chain, params, devices=1, threshold=0.05,
                     **{k: v for k, v in kw.items() if k != "samples"})
b, _ = pure.ei_parts(jax.random.key(0), chain, params, threshold=0.05,
                     **{k: v for k, v in kw.items() if k != "samples"})
out["adaptive"] = a == b
net = nn.Sequential(nn.Linear(6, 4), nn.Sigmoid())
top = dei.topology_of(net, torch.zeros((1, 6)))
t = dict(samples=20_000, in_range=(0, 1), in_bins=8, out_bins=8, seed=0)
out["torch api"] = dei.ei_of_layer(net[0], top, **t) == dei.ei_of_layer(net[0], top, devices=1, **t)
out["torch api cpu:2"] = (dei.ei_of_layer(net[0], top, device="cpu:2", **t)
                          == dei.ei_of_layer(net[0], top, devices=1, **t))
sets = pure.stack_params([({"w": rng.normal(size=(6, 4)).astype(np.float32)},) for _ in range(5)])
one = pure.sweep(jax.random.key(0), chain, sets, samples=20_000, sensitivity_samples=500,
                 in_bins=8, out_bins=8, devices=1)
four = pure.sweep(jax.random.key(0), chain, sets, samples=20_000, sensitivity_samples=500,
                  in_bins=8, out_bins=8)
# the integer counts are the same; EI and sensitivity are float32 sums of entropies over a
# differently laid-out batch, equal to ~1e-6 bits (as the sweep is to single calls)
out["sweep over checkpoints"] = bool(np.array_equal(one.ei_parts, four.ei_parts)) and all(
    bool(np.allclose(getattr(one, name), getattr(four, name), rtol=0, atol=1e-5))
    for name in ("ei", "sensitivity", "degeneracy"))
records = dei.sweep([net.state_dict()] * 3, torch.zeros((1, 6)), model=net, samples=5000,
                    sensitivity_samples=200, in_bins=8, out_bins=8)
records1 = dei.sweep([net.state_dict()] * 3, torch.zeros((1, 6)), model=net, samples=5000,
                     sensitivity_samples=200, in_bins=8, out_bins=8, devices=1)
out["torch sweep"] = len(records) == len(records1) and all(
    abs(a[m] - b[m]) < 1e-5 for a, b in zip(records, records1)
    for m in ("ei", "ei_parts", "sensitivity", "degeneracy"))
try:
    pure.ei_parts(jax.random.key(0), chain, params, devices=9, **kw)
except ValueError as error:
    out["error"] = str(error)
print(json.dumps(out))
"""


def run_python(code, env_extra):
    env = {**os.environ, **env_extra, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_four_host_devices_give_identical_results():
    out = run_python(FOUR_DEVICES, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    error = out.pop("error")
    assert all(out.values()), out
    assert error == "devices must be between 1 and the 4 local device(s); got 9"


def test_bad_devices_argument(key):
    import numpy as np
    from deep_ei_jax import pure
    chain = pure.Chain((pure.Dense(),), (2,))
    params = ({"w": np.eye(2, dtype=np.float32)},)
    with pytest.raises(TypeError,
                       match="devices must be None, an int or a non-empty sequence of jax "
                             "Devices; got .gpu0."):
        pure.ei_parts(key, chain, params, samples=10, devices="gpu0")
    with pytest.raises(ValueError, match="devices must be between 1 and the 1 local"):
        pure.ei_parts(key, chain, params, samples=10, devices=0)


def test_multiprocess_example_agrees_with_one_process():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "multiprocess.py"),
                             "--processes", "2"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "2 processes agree exactly: True" in result.stdout
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["processes"] for line in lines] == [2, 2]
