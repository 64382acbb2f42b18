"""The talk's picture: per stage, share of latency vs share of params, split by block kind ("attention: few params,
most latency"), and a per-unit latency bar chart. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_path

KINDS = ("res", "tf", "sampler", "other")  # "other": stem (time MLP + conv_in) and head
COLORS = {"res": "#4C78A8", "tf": "#F58518", "sampler": "#54A24B", "other": "#9D9D9D"}
NAMES = {"res": "ResNet", "tf": "transformer", "sampler": "down/up sampler", "other": "stem / head"}


def _kind(k: str) -> str:
    return k if k in ("res", "tf", "sampler") else "other"


def plot_profiles(profiles, path: str | Path) -> Path:
    """One row per `ModelProfile`: (left) % of UNet latency and % of params per stage, stacked by kind; (right) the
    median ms of every unit in execution order, coloured by kind. Written atomically (tmp + rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    n = len(profiles)
    fig, axes = plt.subplots(n, 2, figsize=(17, 4.8 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1.5]})
    for row, p in zip(axes, profiles):
        ax, bx = row
        stages = p.stage_summary()
        total_ms = sum(sum(s["ms"].values()) for s in stages) or 1.0
        total_params = sum(sum(s["params"].values()) for s in stages) or 1
        w = 0.38
        for i, s in enumerate(stages):
            for off, key, total, hatch, alpha in ((-w / 2, "ms", total_ms, None, 1.0),
                                                  (w / 2, "params", total_params, "//", 0.55)):
                bottom = 0.0
                agg: dict[str, float] = {}
                for k, v in s[key].items():
                    agg[_kind(k)] = agg.get(_kind(k), 0) + v
                for k in KINDS:
                    v = 100.0 * agg.get(k, 0) / total
                    if v:
                        ax.bar(i + off, v, w, bottom=bottom, color=COLORS[k], hatch=hatch, alpha=alpha,
                               edgecolor="white", linewidth=0.5)
                        bottom += v
        ax.set_xticks(range(len(stages)), [s["stage"] for s in stages], rotation=0, fontsize=9)
        ax.set_ylabel("% of UNet")
        ax.set_title(f"{p.name} @ {p.resolution}px: per stage, latency (solid) vs params (hatched)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        handles = [Patch(color=COLORS[k], label=NAMES[k]) for k in KINDS]
        handles += [Patch(facecolor="gray", label="latency (solid)"),
                    Patch(facecolor="gray", alpha=0.55, hatch="//", edgecolor="white", label="params (hatched)")]
        ax.legend(handles=handles, fontsize=8, loc="upper left", ncol=2)

        timed = [u for u in p.units if u.timing is not None]
        xs = range(len(timed))
        bx.bar(xs, [u.timing.median for u in timed], color=[COLORS[_kind(u.cost.unit.kind)] for u in timed])
        bx.errorbar(xs, [u.timing.median for u in timed],
                    yerr=[[u.timing.median - u.timing.min for u in timed], [u.timing.max - u.timing.median
                                                                             for u in timed]],
                    fmt="none", ecolor="black", elinewidth=0.6, capsize=1.5)
        labels = [u.cost.unit.name.replace(".sampler", ".smp") for u in timed]
        bx.set_xticks(list(xs), labels, rotation=90, fontsize=7)
        bx.set_ylabel("ms (median; bars: min-max)")
        bx.set_title(f"{p.name}: every unit, whole UNet {p.unet.median:.1f} ms ({p.backend}, {p.threads} threads, "
                     f"{p.runs} runs)", fontsize=10)
        bx.grid(axis="y", alpha=0.3)
        # stage boundaries
        prev = None
        for i, u in enumerate(timed):
            if prev is not None and u.cost.unit.stage != prev:
                bx.axvline(i - 0.5, color="gray", lw=0.5, ls=":")
            prev = u.cost.unit.stage
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


__all__ = ["plot_profiles"]
