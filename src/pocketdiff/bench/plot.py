"""The bench's figures: the talk's latency bar chart (per image, split into text encoder / UNet / decoder), and,
when a run covers several resolutions or batches, how the per-image time scales."""

from __future__ import annotations

from pathlib import Path

COLORS = {"text_encoder": "#4c72b0", "unet": "#dd8452", "decoder": "#55a868"}
LABELS = {"text_encoder": "text encoder", "unet": "UNet (all steps)", "decoder": "decoder"}


def plot_bench(result: dict, path: str | Path) -> Path:
    """Left: seconds per image of each configuration at the run's first resolution and batch (log scale, the time and
    the speed-up over the baseline written at each bar). Middle: where the time goes (text encoder / UNet / decoder,
    % of the image). Right, if the run has several resolutions or batches: per-image time against resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    rows = result["rows"]
    res0, b0 = result["resolutions"][0], result["batches"][0]
    main = [r for r in rows if r["resolution"] == res0 and r["batch"] == b0]
    main.sort(key=lambda r: -r["ms_per_image"])
    scaling = len(result["resolutions"]) > 1 or len(result["batches"]) > 1
    ncols = 3 if scaling else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, max(4.0, 0.45 * len(main) + 2.2)), squeeze=False,
                             gridspec_kw={"width_ratios": [2, 1, 2][:ncols]})
    ax, ax_share = axes[0][0], axes[0][1]
    y = list(range(len(main)))
    labels = [f"{r['name']} ({r['dtype']}, {r['backend']})" for r in main]
    total_s = [r["ms_per_image"] / 1e3 for r in main]
    err = [[t - r["ms_per_image_min"] / 1e3 for t, r in zip(total_s, main)],
           [r["ms_per_image_max"] / 1e3 - t for t, r in zip(total_s, main)]]
    ax.barh(y, total_s, xerr=err, color=["#c44e52" if r["name"] == result.get("baseline") else "#4c72b0"
                                         for r in main], ecolor="#555555", capsize=2)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, labels, fontsize=8)
    for i, r in enumerate(main):
        txt = f"  {r['ms_per_image'] / 1e3:,.2f} s" + (f", {r['speedup']:,.0f}x" if r.get("speedup") else "")
        ax.text(r["ms_per_image_max"] / 1e3, i, txt, va="center", fontsize=8)
    ax.set_xlim(min(total_s) / 3, max(total_s) * 12)
    ax.axvline(1.0, color="#999999", lw=0.8, ls="--")
    ax.set_xlabel("seconds per image (log scale; bars: median, whiskers: min-max of the rounds)")
    m = result.get("machine", {})
    ax.set_title(f"{res0}px, batch {b0}: {m.get('cpu', '?')}, {result.get('threads')} threads, "
                 f"{(result.get('date') or '')[:10]}", fontsize=9)
    left = [0.0] * len(main)
    for comp in ("text_encoder", "unet", "decoder"):
        w = [100 * r["shares"][comp] for r in main]
        ax_share.barh(y, w, left=left, color=COLORS[comp], label=LABELS[comp])
        left = [a + b for a, b in zip(left, w)]
    ax_share.set_yticks(y, [""] * len(main))
    ax_share.set_xlim(0, 100)
    ax_share.set_xlabel("% of the image's time")
    ax_share.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, frameon=False)
    if scaling:
        ax2 = axes[0][2]
        for name in sorted({r["name"] for r in rows}):
            for b in result["batches"]:
                pts = sorted((r["resolution"], r["ms_per_image"] / 1e3) for r in rows
                             if r["name"] == name and r["batch"] == b)
                if pts:
                    ax2.plot(*zip(*pts), marker="o", label=f"{name}, batch {b}")
        ax2.set_xlabel("resolution (px)")
        ax2.set_ylabel("seconds per image")
        ax2.set_xticks(result["resolutions"])
        ax2.set_title("scaling: per-image time", fontsize=9)
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


__all__ = ["plot_bench"]
