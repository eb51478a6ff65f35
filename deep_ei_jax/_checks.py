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


def check_groups(groups, num_inputs: int, num_outputs: int):
    """A list of (input indices, output indices) pairs, each a non-empty tuple of distinct in-bounds ints."""
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise TypeError(f"groups must be a list of (input_indices, output_indices) pairs; got {groups!r}")
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
                    raise ValueError(f"groups[{g}] {side} index {i} is out of bounds: the layer has "
                                     f"{size} {side}s (valid 0..{size - 1})")
            if len(set(indices)) != len(indices):
                raise ValueError(f"groups[{g}] {side} indices must be distinct; got {indices}")
            pair.append(tuple(int(i) for i in indices))
        checked.append(tuple(pair))
    if not checked:
        raise ValueError("groups must contain at least one (input_indices, output_indices) pair")
    return tuple(checked)
