#!/usr/bin/env bash
# Create benchmarks/.deep_ei_venv: a separate virtual environment holding the
# reference library deep-ei, so that benchmarks/compare_backends.py can time it
# on the same weights as deep_ei_jax.
#
# Usage (from anywhere):  bash benchmarks/setup_deep_ei.sh [--force]
#   PYTHON=/path/to/python3.11 bash benchmarks/setup_deep_ei.sh   # choose the interpreter
#
# What gets installed and why:
#   * deep-ei==0.6.4 if the package index serves it, otherwise deep-ei==0.7.0
#     (0.7.0 is the 0.6.4 code with the public functions renamed; the benchmark
#     worker handles both spellings). Installed with --no-deps so that its
#     unpinned `torch` requirement can never pull a multi-GB CUDA build.
#   * torch==2.13.0, pinned: a CPU wheel. NEVER install an unpinned torch here.
#   * numpy<2 (deep-ei predates numpy 2); torch 2.13 is built against the numpy 2
#     ABI, which stays importable with numpy 1.26 (checked below).
#   * networkx<=2.5.1 (deep-ei's era: topology_of uses the 2.x graph API),
#     scikit-learn, scipy, fast-histogram (deep-ei's histogram kernel).
# The script ends with a smoke test that imports everything and runs one tiny
# deep-ei call; it fails loudly if any of that breaks.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.deep_ei_venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi
# pip install, minus the harmless "Location ... is ignored" notes this machine's
# extra (local) indexes produce for packages they do not hold.
pip_install() {
    "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}

# torch first, pinned, so nothing later resolves a different one.
pip_install "torch==2.13.0"
pip_install "numpy<2" "networkx<=2.5.1" scikit-learn scipy fast-histogram

# deep-ei itself: prefer the exact reference version.
if pip_install --no-deps "deep-ei==0.6.4" >/dev/null; then
    echo "installed deep-ei==0.6.4"
else
    echo "deep-ei==0.6.4 is not served by the index; installing 0.7.0 (same code, renamed API)"
    pip_install --no-deps "deep-ei==0.7.0"
fi

"$venv/bin/python" -m pip check --disable-pip-version-check

"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import numpy, torch, networkx, sklearn, scipy, fast_histogram  # noqa: F401
import deep_ei

assert numpy.__version__.startswith("1."), numpy.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
torch.from_numpy(numpy.zeros(3)).numpy()  # torch <-> numpy 1.x interop works

torch.manual_seed(0)
ei = getattr(deep_ei, "ei_of_layer", None) or deep_ei.ei_parts
model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.Sigmoid())
top = deep_ei.topology_of(model, torch.zeros((1, 2)))
value = ei(model[0], top, samples=2000, in_range=(0, 1), in_bins=8,
           out_range=(0, 1), out_bins=8, batch_size=1000, device="cpu")
print("smoke test ok: EI_parts(2->2 sigmoid, 2000 samples) =", round(float(value), 4))
for name in ("deep-ei", "torch", "numpy", "networkx", "scikit-learn", "scipy", "fast-histogram"):
    print(f"  {name}=={md.version(name)}")
EOF
echo "deep-ei environment ready: $venv"
