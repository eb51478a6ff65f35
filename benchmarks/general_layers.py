"""Time layers that only the graph path can measure: a residual basic block and a transformer block.

    python -m benchmarks.general_layers [--cases block,transformer] [--repeats N] [--samples N]

Run from the repository root with the project venv. Cases (EI_parts by `ei_of_layer`, 8 bins):
  block        a ResNet basic block, 16 channels, 3x3 convs, BatchNorm (eval, random running
               statistics), identity shortcut, ReLU; input 16 x 8 x 8; measured at the centre
               pixel: its inputs are the 16 x 5 x 5 elements that pixel depends on.
  transformer  a GPT-2 block (transformers; layer norm, causal attention with 4 heads, MLP),
               d_model 16, 4 tokens; measured at the centre token (index 2): its inputs are all
               4 x 16 elements (dependencies are structural: the causal mask is a select whose
               masked branch still counts). Skipped when transformers is absent.

Every case runs in a fresh subprocess (peak RSS per case). Timing as `_timing.timed`: compile_s is
the first call (capture, dependency tracing and compilation included), run_s the median of
--repeats further calls. Output: one JSON line per case (name, backend, sizes, bins, calls,
device, versions, compile_s, run_s, samples, samples_per_s, pairs, pair_samples_per_s, value,
peak_rss_mb), then '# ' notes. pair_samples_per_s = samples x inputs x outputs / run_s.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import resource
import subprocess
import sys

from benchmarks._timing import timed, use_compilation_cache

CASES = ("block", "transformer")


def _block():
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)

        def forward(self, x):
            h = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(h)) + x)

    torch.manual_seed(0)
    block = BasicBlock(16)
    for norm in (block.bn1, block.bn2):
        with torch.no_grad():
            norm.running_mean.copy_(0.1 * torch.randn(16))
            norm.running_var.copy_(torch.rand(16) + 0.5)
    return block.eval(), torch.zeros((1, 16, 8, 8)), "16x8x8 -> 16x8x8"


def _transformer():
    import torch
    try:
        import transformers
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    except ImportError:
        return None
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_head=4, n_layer=1, n_positions=8)
    config._attn_implementation = "eager"
    return GPT2Block(config).eval(), torch.zeros((1, 4, 16)), "4x16 -> 4x16"


def run_case(name: str, samples: int, repeats: int) -> dict:
    import deep_ei_jax as dei
    from deep_ei_jax.bridge import resolve_span
    built = {"block": _block, "transformer": _transformer}[name]()
    record = {"name": name, "backend": "cpu", "bins": 8,
              "calls": [f"ei_of_layer(samples={samples:.0e})"], "device": "cpu"}
    if built is None:
        return {**record, "skipped": "transformers is not installed"}
    model, example, sizes = built
    top = dei.topology_of(model, example)

    def measure():
        return dei.ei_of_layer(model, top, samples=samples, in_bins=8, out_bins=8, seed=0)

    value, compile_s, run_s = timed(measure, repeats)
    span, _, _ = resolve_span(model, top)
    n_in, n_out = span.chain.in_shape[0], len(span.chain.layers[0].fn.outputs)
    return {**record, "sizes": sizes, "position": list(span.position),
            "versions": {p: importlib.metadata.version(p) for p in ("jax", "torch")},
            "compile_s": compile_s, "run_s": run_s, "repeats": repeats, "samples": samples,
            "samples_per_s": samples / run_s, "pairs": [n_in, n_out],
            "pair_samples_per_s": samples * n_in * n_out / run_s, "value": value,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--case", help=argparse.SUPPRESS)   # the subprocess of one case
    args = parser.parse_args(argv)
    use_compilation_cache()
    if args.case:
        print(json.dumps(run_case(args.case, args.samples, args.repeats)), flush=True)
        return
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        if name not in CASES:
            parser.error(f"--cases: unknown case {name!r}; choose from {','.join(CASES)}")
        done = subprocess.run([sys.executable, "-m", "benchmarks.general_layers", "--case", name,
                               "--samples", str(args.samples), "--repeats", str(args.repeats)],
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            print(json.dumps({"name": name, "error": f"exited {done.returncode}: {tail}"}))
            continue
        print(lines[-1], flush=True)
    print("# pair_samples_per_s = samples x measured inputs x outputs / run_s; peak RSS of the "
          "case's own process", flush=True)


if __name__ == "__main__":
    main()
