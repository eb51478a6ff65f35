"""A span's static program and the pure JAX function that runs it.

A `Program` is hashable plain data: the steps of a span (op name, arguments with `Val(i)` for the
i-th value, `Param(key)` for a parameter, `Const` for an integer or boolean constant), the shapes
of its inputs and outputs, and the parameter keys. It holds no weights, so two models of one
architecture give equal programs, and `function_for(program)` returns one `GraphFunction` object
for both: jit sees the same static function and compiles once; the weights come in as `params`.

Values are numbered: the span's inputs are 0 ... k-1, and step j makes value k + j.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .graph import DType, Ignored
from .ops import translation


class Val(NamedTuple):
    """The value with this number (an input of the span, or a step's result)."""

    index: int


class Param(NamedTuple):
    """A parameter or buffer of the span, by its key in `params`."""

    key: str


class Const(NamedTuple):
    """A small non-float constant tensor (an index buffer, a mask), stored by value."""

    dtype: str
    shape: tuple
    data: bytes

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)


class Step(NamedTuple):
    """One op of the program: `translation(op)(*args, **dict(kwargs))`."""

    op: str
    args: tuple
    kwargs: tuple


class Program(NamedTuple):
    """The static structure of a span.

    Attributes:
      steps: the ops in order.
      in_shapes: the captured shape of each input (one evaluation; a batch axis of 1 included).
      sample_shapes: the per-sample shape of each input (`in_shapes` less a leading axis of 1).
      outputs: the values returned, as `Val`s.
      out_shapes: the captured shape of each output.
      out_sample_shapes: the per-sample shape of each output.
      param_keys: the keys `params` must hold, sorted.
    """

    steps: tuple
    in_shapes: tuple
    sample_shapes: tuple
    outputs: tuple
    out_shapes: tuple
    out_sample_shapes: tuple
    param_keys: tuple


class TranslationError(Exception):
    """Running step `step` (op `op`) of a program failed; `__cause__` says why."""

    def __init__(self, step: int, op: str, error: Exception):
        super().__init__(f"step {step} ({op}): {type(error).__name__}: {error}")
        self.step = step
        self.op = op
        self.error = error


def _resolve(value, values: list, params: dict):
    if isinstance(value, Val):
        return values[value.index]
    if isinstance(value, Param):
        return params[value.key]
    if isinstance(value, Const):
        return jnp.asarray(value.array())
    if isinstance(value, (DType, Ignored)):
        return value
    if isinstance(value, tuple):
        return tuple(_resolve(v, values, params) for v in value)
    return value


def run(program: Program, params: dict, inputs: tuple) -> tuple:
    """Runs the program on one evaluation's inputs (captured shapes); returns its outputs."""
    values = list(inputs)
    for i, step in enumerate(program.steps):
        try:
            args = _resolve(step.args, values, params)
            kwargs = {k: _resolve(v, values, params) for k, v in step.kwargs}
            values.append(translation(step.op)(*args, **kwargs))
        except Exception as error:
            raise TranslationError(i, step.op, error) from error
    return tuple(values[v.index] for v in program.outputs)


@dataclasses.dataclass(frozen=True)
class GraphFunction:
    """fn(params, x): the span's program as a batched pure JAX function.

    Call it with `params` (a dict of arrays with `program.param_keys`) and `x` of shape
    `[N, *in_shape]`: `in_shape` is the one input's per-sample shape, or `(n_in,)` when the span
    has several inputs, which are then flattened and concatenated in order. It returns
    `[N, *out_shape]` likewise (several outputs flattened and concatenated). Samples are
    independent: the program runs on each through `jax.vmap`. It hashes and compares by its
    program (a frozen dataclass, so `jax.jit` can also take it directly).
    """

    program: Program

    @property
    def in_shape(self) -> tuple:
        return _joint_shape(self.program.sample_shapes)

    @property
    def out_shape(self) -> tuple:
        return _joint_shape(self.program.out_sample_shapes)

    def __call__(self, params: dict, x: jax.Array) -> jax.Array:
        program = self.program
        count = x.shape[0]
        if len(program.in_shapes) == 1:
            pieces = (jnp.reshape(x, (count,) + program.in_shapes[0]),)
        else:
            sizes = [int(np.prod(s)) for s in program.in_shapes]
            flat = jnp.reshape(x, (count, sum(sizes)))
            bounds = np.cumsum(sizes)[:-1].tolist()
            pieces = tuple(jnp.reshape(p, (count,) + s)
                           for p, s in zip(jnp.split(flat, bounds, axis=1), program.in_shapes))
        params = {k: jnp.asarray(params[k]) for k in program.param_keys}
        outs = jax.vmap(lambda *xs: run(program, params, xs))(*pieces)
        if len(outs) == 1:
            return jnp.reshape(outs[0], (count,) + program.out_sample_shapes[0])
        return jnp.concatenate([jnp.reshape(o, (count, int(np.prod(o.shape[1:]))))
                                for o in outs], axis=1)


def _joint_shape(shapes: tuple) -> tuple:
    if len(shapes) == 1:
        return tuple(shapes[0])
    return (int(sum(int(np.prod(s)) for s in shapes)),)


@functools.lru_cache(maxsize=1024)
def function_for(program: Program) -> GraphFunction:
    """The one GraphFunction object of `program` (equal programs share it)."""
    return GraphFunction(program)
