"""An independent oracle for exact EI_parts of 3-input layers (no code shared with exact.py).

For pair (A, B) the other two inputs' weighted sum has a trapezoid density whose CDF is written
in closed form; P(x_A in bin i, y_B < e) is the integral over the input bin of that CDF at
act^-1(e) - w x, done with composite Gauss-Legendre (64 panels x 8 points per bin: the integrand
is piecewise quadratic with a few kinks, so the quadrature error is far below 1e-9).
"""
import math

import numpy as np


def _cdf_two_uniforms(t, lows, widths):
    """CDF of U[l1, l1 + h1] + U[l2, l2 + h2] (h1, h2 > 0) at t."""
    h1, h2 = max(widths), min(widths)
    u = np.asarray(t, float) - sum(lows)
    return np.where(u <= 0, 0.0, np.where(
        u <= h2, u * u / (2 * h1 * h2), np.where(
            u <= h1, (u - h2 / 2) / h1, np.where(
                u <= h1 + h2, 1 - (h1 + h2 - u) ** 2 / (2 * h1 * h2), 1.0))))


def _threshold(activation, edge, top):
    """t with {y < edge} = {z < t} ({y <= edge} = {z <= t} for the top edge)."""
    if activation == "identity":
        return edge
    if activation == "relu":
        return -math.inf if (edge < 0 or (edge == 0 and not top)) else edge
    low, high = (0.0, 1.0) if activation == "sigmoid" else (-1.0, 1.0)
    if edge <= low:
        return -math.inf
    if edge >= high:
        return math.inf
    return math.log(edge / (1 - edge)) if activation == "sigmoid" else math.atanh(edge)


def oracle_ei_parts_3_inputs(w, b, activation, in_range, out_range, bins, panels=64, order=8):
    """(MI matrix [3, n_out] in bits, unnormalised tables [3, n_out, bins, bins])."""
    low, high = in_range
    width = high - low
    x_edges = low + width * np.arange(bins + 1) / bins
    y_edges = out_range[0] + (out_range[1] - out_range[0]) * np.arange(bins + 1) / bins
    nodes, node_weights = np.polynomial.legendre.leggauss(order)
    n_in, n_out = w.shape
    matrix, tables = np.zeros((n_in, n_out)), np.zeros((n_in, n_out, bins, bins))
    for a in range(n_in):
        for b_ in range(n_out):
            others = [k for k in range(n_in) if k != a]
            lows = [min(w[k, b_] * low, w[k, b_] * high) for k in others]
            lows[0] += b[b_]
            widths = [abs(w[k, b_]) * width for k in others]
            below = np.zeros((bins, bins + 1))
            for i in range(bins):
                edges = np.linspace(x_edges[i], x_edges[i + 1], panels + 1)
                half = (edges[1] - edges[0]) / 2
                x = ((edges[:-1] + edges[1:])[:, None] / 2 + half * nodes[None, :]).ravel()
                weights = half * np.tile(node_weights, panels)
                for j in range(bins + 1):
                    t = _threshold(activation, y_edges[j], j == bins)
                    if math.isinf(t):
                        below[i, j] = 0.0 if t < 0 else x_edges[i + 1] - x_edges[i]
                    else:
                        below[i, j] = (weights * _cdf_two_uniforms(t - w[a, b_] * x, lows,
                                                                   widths)).sum()
            p = np.diff(below / width, axis=1)
            tables[a, b_] = p
            q = p / p.sum()
            rows, cols = q.sum(1, keepdims=True), q.sum(0, keepdims=True)
            nonzero = q > 0
            matrix[a, b_] = (q[nonzero] * np.log2(q[nonzero] / (rows * cols)[nonzero])).sum()
    return matrix, tables
