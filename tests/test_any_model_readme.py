"""The README's "Measuring your own model" section: its code runs, and its list of supported ops
is the op table's (regenerate with `python -m deep_ei_jax.bridge.opslist README.md`)."""
import contextlib
import io
import pathlib
import re

import pytest

pytest.importorskip("torch")

from deep_ei_jax.bridge import opslist  # noqa: E402

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Measuring your own model")
    return text[start:text.index("\n## ", start + 1)]


def test_readme_supported_ops_are_the_op_table():
    text = section()
    listed = text[text.index(opslist.BEGIN) + len(opslist.BEGIN):text.index(opslist.END)]
    assert listed.strip() == opslist.markdown()
    assert "`aten.convolution`" in listed and "`aten.scaled_dot_product_attention`" in listed


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", section(), flags=re.S)
    assert len(blocks) == 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README tutorial CNN", "exec"), {"__name__": "readme_cnn"})
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["conv1", "conv2", "fc1", "fc2", "fc3"]
    assert lines[0].endswith("position (14, 14)") and lines[2].endswith("position None")
    assert all(float(line.split()[1]) >= 0 for line in lines)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[1], "README residual block", "exec"), {"__name__": "readme_block"})
    lines = out.getvalue().splitlines()
    assert float(lines[0]) >= 0 and float(lines[1]) >= 0
    assert "skip connection" in lines[2] and "depends on tensor" in lines[2]
