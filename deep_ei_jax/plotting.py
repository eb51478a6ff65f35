"""Pictures of measurement records (matplotlib, drawn off-screen with the Agg backend).

* `causal_plane`: each layer's point (sensitivity, degeneracy); with several steps (or models) a
  trajectory per layer whose points are coloured by step. Lines of constant EI = sensitivity -
  degeneracy run at 45 degrees; EI = 0 is the diagonal.
* `measures_over_steps`: EI, EI_parts, sensitivity and degeneracy against step, one line per layer
  (or, with a single step, a bar per layer).

Records are dicts as `deep_ei_jax.sweep`, a `Tracker` or `deep-ei-jax measure --json` write them.
"""
from __future__ import annotations

import os

MEASURES = ("ei", "ei_parts", "sensitivity", "degeneracy")
LABELS = {"ei": "EI", "ei_parts": "EI_parts", "sensitivity": "sensitivity",
          "degeneracy": "degeneracy"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def step_key(records) -> str | None:
    """'step' when the records have several steps, else 'model' when several models, else None."""
    for key in ("step", "model"):
        values = {r.get(key) for r in records}
        if None not in values and len(values) > 1:
            return key
    return None


def _by_layer(records):
    layers = {}
    for record in records:
        layers.setdefault(str(record["layer"]), []).append(record)
    return layers


def causal_plane(records):
    """The causal plane: sensitivity (x) vs degeneracy (y) per layer. Returns the Figure."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 5.2), layout="constrained")
    key = step_key(records)
    layers = _by_layer(records)
    high = max(max(r["sensitivity"], r["degeneracy"], 0.0) for r in records) * 1.08 or 1.0
    ax.plot([0, high], [0, high], color="0.7", linewidth=0.8, linestyle="--", label="EI = 0")
    colours = plt.get_cmap("tab10")
    points = None
    for index, (layer, rows) in enumerate(layers.items()):
        rows = sorted(rows, key=lambda r: r.get(key, 0)) if key else rows
        x = [r["sensitivity"] for r in rows]
        y = [r["degeneracy"] for r in rows]
        name = f"layer {layer}" + (f" ({rows[0]['module']})" if rows[0].get("module") else "")
        if key:
            ax.plot(x, y, color=colours(index % 10), linewidth=1.2, label=name, zorder=1)
            points = ax.scatter(x, y, c=[r[key] for r in rows], cmap="viridis", s=22,
                                edgecolors=colours(index % 10), linewidths=0.8, zorder=2)
            ax.annotate(f"{layer}", (x[-1], y[-1]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        else:
            ax.scatter(x, y, color=colours(index % 10), s=40, label=name, zorder=2)
    if points is not None:
        figure.colorbar(points, ax=ax, label=key)
    ax.set_xlim(0, high)
    ax.set_ylim(min(0.0, min(r["degeneracy"] for r in records) * 1.08), high)
    ax.set_xlabel("sensitivity (bits)")
    ax.set_ylabel("degeneracy = sensitivity - EI (bits)")
    ax.set_title("causal plane" + (f" over {key}s" if key else ""))
    ax.legend(fontsize=8, loc="upper left")
    return figure


def measures_over_steps(records):
    """EI, EI_parts, sensitivity, degeneracy against step (or per layer). Returns the Figure."""
    plt = _pyplot()
    present = [m for m in MEASURES if all(m in r for r in records)]
    figure, axes = plt.subplots(1, len(present), figsize=(3.4 * len(present), 3.4),
                                layout="constrained", squeeze=False)
    key = step_key(records)
    layers = _by_layer(records)
    for ax, measure in zip(axes[0], present):
        if key:
            for layer, rows in layers.items():
                rows = sorted(rows, key=lambda r: r[key])
                ax.plot([r[key] for r in rows], [r[measure] for r in rows], marker="o",
                        markersize=3, label=f"layer {layer}")
            ax.set_xlabel(key)
        else:
            names = list(layers)
            ax.bar(range(len(names)), [layers[n][0][measure] for n in names])
            ax.set_xticks(range(len(names)), [f"layer {n}" for n in names], rotation=30)
        ax.set_title(LABELS[measure])
        ax.set_ylabel("bits")
    if key:
        axes[0][0].legend(fontsize=8)
    return figure


def save_figures(records, out_dir) -> list[str]:
    """Writes causal_plane.png and measures.png into `out_dir`; returns their paths."""
    plt = _pyplot()
    paths = []
    for name, draw in (("causal_plane.png", causal_plane), ("measures.png", measures_over_steps)):
        figure = draw(records)
        path = os.path.join(out_dir, name)
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths
