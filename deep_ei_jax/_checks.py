"""Argument checks shared by the public functions: each error names the argument, what was expected
and what came."""
from __future__ import annotations

import math
import numbers

import numpy as np


def check_range(name: str, value, *, allow_dynamic: bool = False):
    """A (low, high) pair of finite numbers with low < high, or 'dynamic' where allowed."""
    if isinstance(value, str):
        if value == "dynamic" and allow_dynamic:
            return value
        expected = "(low, high) or 'dynamic'" if allow_dynamic else "(low, high)"
        if value == "dynamic":
            raise ValueError(f"{name} cannot be 'dynamic' (only out_range can be); "
                             f"expected {expected}")
        raise ValueError(f"{name} must be {expected}; got {value!r}")
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of numbers (low, high); got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise ValueError(f"{name} must be (low, high) with finite low < high; got {tuple(value)!r}")
    return (low, high)


def check_bins(name: str, value, *, allow_dynamic: bool = False):
    """An integer number of bins >= 2, or 'dynamic' where allowed."""
    if isinstance(value, str) and value == "dynamic" and allow_dynamic:
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        expected = "an integer >= 2 or 'dynamic'" if allow_dynamic else "an integer >= 2"
        raise TypeError(f"{name} must be {expected}; got {value!r}")
    if value < 2:
        raise ValueError(f"{name} must be an integer >= 2; got {value}")
    return int(value)


def check_samples(name: str, value):
    """A positive integer number of samples."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    if value >= 2 ** 31:
        raise ValueError(f"{name} must be below 2**31 (int32 counts); got {value}")
    return int(value)


def check_threshold(value):
    """A threshold strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"threshold must be a number in (0, 1); got {value!r}")
    if not 0 < value < 1:
        raise ValueError(f"threshold must be in (0, 1); got {value}")
    return float(value)


def check_choice(name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")
    return value


def check_measures(names, choices) -> tuple:
    """Measure names: one name or a non-empty sequence of names, each one of `choices`.

    Args:
      names: a name (str) or a sequence of names.
      choices: the names allowed (e.g. `sweeping.MEASURES`).

    Returns:
      The names as a tuple, in the order given.
    """
    choices = tuple(choices)
    if isinstance(names, str):
        names = (names,)
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(f"measures must be a sequence of names from {choices}; "
                        f"got {names!r}") from None
    for name in names:
        if name not in choices:
            raise ValueError(f"measures must be names from {choices}; got {name!r}")
    if not names:
        raise ValueError(f"measures must name at least one of {choices}; got an empty sequence")
    return names


def check_groups(groups, num_inputs: int, num_outputs: int):
    """A list of (input indices, output indices) pairs, each a non-empty tuple of distinct
    in-bounds ints."""
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise TypeError(f"groups must be a list of (input_indices, output_indices) pairs; "
                        f"got {groups!r}")
    checked = []
    for g, group in enumerate(groups):
        try:
            ins, outs = group
        except (TypeError, ValueError):
            raise TypeError(f"groups[{g}] must be a pair (input_indices, output_indices); "
                            f"got {group!r}") from None
        pair = []
        for side, indices, size in (("input", ins, num_inputs), ("output", outs, num_outputs)):
            try:
                indices = tuple(indices)
            except TypeError:
                raise TypeError(f"groups[{g}] {side} indices must be a tuple of ints; "
                                f"got {indices!r}") from None
            if not indices:
                raise ValueError(f"groups[{g}] {side} indices must not be empty")
            for i in indices:
                if isinstance(i, bool) or not isinstance(i, (numbers.Integral, np.integer)):
                    raise TypeError(f"groups[{g}] {side} indices must be ints; got {i!r}")
                if not 0 <= i < size:
                    raise ValueError(f"groups[{g}] {side} index {i} is out of bounds: the layer "
                                     f"has {size} {side}s (valid 0..{size - 1})")
            if len(set(indices)) != len(indices):
                raise ValueError(f"groups[{g}] {side} indices must be distinct; got {indices}")
            pair.append(tuple(int(i) for i in indices))
        checked.append(tuple(pair))
    if not checked:
        raise ValueError("groups must contain at least one (input_indices, output_indices) pair")
    return tuple(checked)


def check_positive_int(name: str, value, *, below: int | None = None):
    """A positive integer (not a bool), optionally below a bound."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a positive integer; got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be a positive integer below {below}; got {value}")
    return int(value)


SEED_RANGE = (-2 ** 63, 2 ** 63)  # what jax.random.key takes


def check_seed(name: str, value, *, allow_none: bool = False):
    """An integer seed that jax.random.key accepts (a signed 64-bit integer), or None if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int{' or None' if allow_none else ''}; got {value!r}")
    low, high = SEED_RANGE
    if not low <= value < high:
        raise ValueError(f"{name} must be a 64-bit signed integer (-2**63 <= {name} < 2**63); "
                         f"got {value}")
    return int(value)


def _layer_name(index: int, spec) -> str:
    from .layers import Function
    if isinstance(spec, Function):
        return f"layer {index}, Function {spec.name!r}"
    return f"layer {index}, {type(spec).__name__}"


def check_chain(chain):
    """A `Chain` whose in_shape is a tuple of positive ints and whose layers are a non-empty tuple
    of layer specs."""
    from .layers import LAYER_TYPES, Chain
    if not isinstance(chain, Chain):
        raise TypeError(f"chain must be a deep_ei_jax.Chain; got {type(chain).__name__}")
    shape = chain.in_shape
    expected = "a non-empty tuple of positive ints (the per-sample input shape, e.g. (20,))"
    if not isinstance(shape, tuple) or not all(
            isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool)
            for v in shape):
        raise TypeError(f"chain.in_shape must be {expected}; got {shape!r}")
    if not shape or not all(v > 0 for v in shape):
        raise ValueError(f"chain.in_shape must be {expected}; got {shape!r}")
    if not isinstance(chain.layers, tuple) or not chain.layers:
        raise TypeError(f"chain.layers must be a non-empty tuple of layer specs "
                        f"({', '.join(t.__name__ for t in LAYER_TYPES)}); got {chain.layers!r}")
    for i, spec in enumerate(chain.layers):
        if not isinstance(spec, LAYER_TYPES):
            raise TypeError(f"chain.layers[{i}] must be one of "
                            f"{', '.join(t.__name__ for t in LAYER_TYPES)}; got {spec!r}")
    return chain


def _real_array(where: str, value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as error:  # noqa: BLE001 - e.g. a torch tensor on another device
        raise TypeError(f"{where} must be an array of real numbers; got {type(value).__name__} "
                        f"({error})") from None
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{where} must be an array of real numbers; got dtype {array.dtype} "
                        f"({type(value).__name__})")
    return array


def check_params(chain, params, *, stacked: bool = False):
    """Checks that `params` fit `chain` before any work: one dict per layer, 'w' (and optional
    'b') for Dense and Conv2d, nothing for pooling and Flatten, real finite arrays of the shapes
    the layer expects on its input. With `stacked`, every array has a leading axis (one entry per
    parameter set, as `sweep` takes); the shapes are checked without it.

    Raises:
      TypeError / ValueError naming the layer index, the parameter and the expected and received
      shapes (or the first non-finite entry).
    """
    from .layers import Conv2d, Dense, Function, layers_out_shape, param_shapes
    check_chain(chain)
    if not isinstance(params, (tuple, list)):
        raise TypeError(f"params must be a tuple with one dict of arrays per layer of the chain "
                        f"({len(chain.layers)}); got {type(params).__name__}")
    if len(params) != len(chain.layers):
        raise ValueError(f"params must have one entry per layer of the chain "
                         f"({len(chain.layers)}); got {len(params)}")
    shape = tuple(int(v) for v in chain.in_shape)
    for i, (spec, layer_params) in enumerate(zip(chain.layers, params)):
        name = _layer_name(i, spec)
        if not isinstance(layer_params, dict):
            raise TypeError(f"params[{i}] ({name}) must be a dict of arrays; "
                            f"got {type(layer_params).__name__}")
        allowed = ("w", "b") if isinstance(spec, (Dense, Conv2d)) else ()
        unknown = sorted(str(k) for k in layer_params if k not in allowed)
        if isinstance(spec, Function):
            _check_function_keys(i, name, layer_params)
        elif unknown:
            takes = "'w' and an optional 'b'" if allowed else "no parameters ({})"
            raise ValueError(f"params[{i}] ({name}) has unknown key(s) {unknown}; the layer "
                             f"takes {takes}")
        arrays = {}
        for key, value in layer_params.items():
            if value is None and key == "b":
                continue
            array = _real_array(f"params[{i}][{key!r}] ({name})", value)
            if stacked:
                if array.ndim == 0:
                    raise ValueError(f"params[{i}][{key!r}] ({name}) must have a leading axis "
                                     f"(one entry per parameter set); got a scalar")
                bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1) \
                    if array.dtype.kind == "f" else np.zeros(array.shape[0], bool)
                if bad.any():
                    raise ValueError(f"params[{i}][{key!r}] ({name}) has non-finite values (NaN "
                                     f"or inf) in parameter set {int(np.argmax(bad))}")
                array = array[0]
            elif array.dtype.kind == "f" and not np.isfinite(array).all():
                where = tuple(int(v) for v in np.argwhere(~np.isfinite(array))[0])
                raise ValueError(f"params[{i}][{key!r}] ({name}) has non-finite values (NaN or "
                                 f"inf), first at index {where}")
            arrays[key] = array
        if isinstance(spec, Dense):
            _check_dense(i, name, arrays, shape)
        elif isinstance(spec, Conv2d):
            _check_conv(i, name, spec, arrays, shape)
        elif isinstance(spec, Function):
            _check_function_output(name, spec, arrays, shape)
        try:
            out = layers_out_shape((spec,), param_shapes((arrays,)), shape)
        except Exception as error:  # noqa: BLE001 - a shape the layer cannot take
            first = str(error).strip().splitlines()
            raise ValueError(f"{name} cannot take a per-sample input of shape {shape}: "
                             f"{first[0] if first else type(error).__name__}") from None
        if not all(out):
            raise ValueError(f"{name} gives an empty output (shape {out}) for a per-sample "
                             f"input of shape {shape}")
        shape = out
    return params


def _check_dense(i, name, arrays, shape):
    if "w" not in arrays:
        raise ValueError(f"params[{i}] ({name}) needs 'w' of shape [n_in, n_out]")
    w = arrays["w"]
    if w.ndim != 2 or w.shape[0] != shape[-1] or w.shape[1] == 0:
        raise ValueError(f"params[{i}]['w'] ({name}) has shape {w.shape}; expected "
                         f"({shape[-1]}, n_out): [n_in, n_out] with n_in = {shape[-1]}, the last "
                         f"axis of the layer's per-sample input {shape}")
    if "b" in arrays and arrays["b"].shape != (w.shape[1],):
        raise ValueError(f"params[{i}]['b'] ({name}) has shape {arrays['b'].shape}; expected "
                         f"({w.shape[1]},): one bias per output")


def _check_conv(i, name, spec, arrays, shape):
    if len(shape) != 3:
        raise ValueError(f"{name} needs a per-sample input of shape (C, H, W); got {shape}")
    if "w" not in arrays:
        raise ValueError(f"params[{i}] ({name}) needs 'w' of shape [C_out, C_in/groups, kH, kW]")
    w, groups = arrays["w"], spec.groups
    if w.ndim != 4 or w.shape[1] * groups != shape[0] or w.shape[0] % groups or 0 in w.shape:
        raise ValueError(f"params[{i}]['w'] ({name}) has shape {w.shape}; expected "
                         f"(C_out, {shape[0] // groups if shape[0] % groups == 0 else '?'}, kH, "
                         f"kW): [C_out, C_in/groups, kH, kW] with C_in = {shape[0]}, "
                         f"groups = {groups}")
    if "b" in arrays and arrays["b"].shape != (w.shape[0],):
        raise ValueError(f"params[{i}]['b'] ({name}) has shape {arrays['b'].shape}; expected "
                         f"({w.shape[0]},): one bias per output channel")


def _check_function_keys(i, name, layer_params):
    """A Function layer's params: a flat dict of arrays keyed by strings (nothing nested, no
    None)."""
    for key, value in layer_params.items():
        if not isinstance(key, str):
            raise TypeError(f"params[{i}] ({name}) must be keyed by strings; got key {key!r}")
        if value is None or isinstance(value, (dict, list, tuple)):
            got = "None" if value is None else type(value).__name__
            raise TypeError(f"params[{i}][{key!r}] ({name}) must be an array (a Function "
                            f"layer's params are a flat dict of arrays: flatten nested params "
                            f"into keys such as 'block.conv.weight', and leave out absent "
                            f"ones); got {got}")


def _check_function_output(name, spec, arrays, shape):
    """The function runs on a batch of the declared input shape and returns [N, *out] floats."""
    import jax
    import jax.numpy as jnp
    if not callable(spec.fn):
        raise TypeError(f"{name}: fn must be a callable fn(params, x); got {spec.fn!r}")
    abstract = {k: jax.ShapeDtypeStruct(a.shape, jnp.float32) for k, a in arrays.items()}
    batch = 2
    try:
        out = jax.eval_shape(spec.fn, abstract,
                             jax.ShapeDtypeStruct((batch,) + tuple(shape), jnp.float32))
    except Exception as error:  # noqa: BLE001 - whatever the function raises on this shape
        first = str(error).strip().splitlines()
        raise ValueError(f"{name} cannot take a batch of per-sample inputs of shape {shape} "
                         f"(fn(params, x) with x of shape {(batch,) + tuple(shape)} raised "
                         f"{type(error).__name__}: {first[0] if first else ''})") from None
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"{name}: fn(params, x) must return one array [N, *out_shape]; got "
                        f"{type(out).__name__}")
    if len(out.shape) < 2 or out.shape[0] != batch:
        raise ValueError(f"{name}: fn(params, x) must return [N, *out_shape] with the batch "
                         f"first and at least one per-sample axis; for x of shape "
                         f"{(batch,) + tuple(shape)} it returned shape {tuple(out.shape)}")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{name}: fn(params, x) must return floats; got dtype {out.dtype}")
