"""The benchmark scripts run end to end (functional checks only; nothing here is timed)."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_gpu_check_smoke_runs_on_cpu():
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--smoke"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert {r["name"] for r in records} == {"W4", "W6-large"}
    assert all(r.get("pair_samples_per_s", 1) > 0 for r in records)


def test_scaling_quick_sweep(tmp_path):
    plot = tmp_path / "scaling.png"
    result = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--quick", "--sweeps",
                             "samples,by_samples", "--repeats", "1", "--plot", str(plot)],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json_lines(result.stdout)
    assert [r["samples"] for r in records] == [10 ** 4, 10 ** 5, 500, 4000]
    assert all(r["run_s"] > 0 and r["peak_rss_mib"] > 0 for r in records)
    # the wide layer is counted by its samples, the narrow one by tables
    assert [r["method"] for r in records] == ["numba", "numba", "samples", "samples"]
    assert plot.stat().st_size > 1000
