"""Issue #5's distillation ablations as one figure: a column per ablation, a row per held-out set, FID against
compositional accuracy over w for each variant, with the teacher's 8-step samplers in grey for reference.

    python scripts/plot_ablations.py docs/results/distillation/ablations/gentle_vs_base.json --out gentle_ablations.png

Reads the pooled rows that `scripts/compare_evals.py --json` writes; the labels are those of
`scripts/distill_ablations.sh` (base, p0, p1, w2to6, t16, chain, prog, ddim8, dpmpp8). A variant missing from the
file is left out of its panel.
"""

from __future__ import annotations

import argparse
import json

# (column title, [(label in the JSON, legend name)]); `base` is the shipped recipe, in every column
ABLATIONS = [
    ("CFG loss probability p", [("base", "p 0.1 (base)"), ("p0", "p 0 (vanilla only)"), ("p1", "p 1 (CFG only)")]),
    ("CFG loss guidance range", [("base", "w in [2, 14] (base)"), ("w2to6", "w in [2, 6]")]),
    ("schedule", [("base", "direct 32 -> 8 (base)"), ("chain", "32 -> 16 -> 8"), ("prog", "64 -> 32 -> 16 -> 8")]),
    ("teacher steps", [("base", "32-step teacher (base)"), ("t16", "16-step teacher")]),
]
REFERENCE = [("ddim8", "teacher DDIM 8", ":"), ("dpmpp8", "teacher DPM-Solver++ 8", "--")]


def columns(labels: set[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The ablations that `labels` can draw: each column keeps the variants present, and needs two of them."""
    cols = [(title, [v for v in variants if v[0] in labels]) for title, variants in ABLATIONS]
    return [(title, variants) for title, variants in cols if len(variants) > 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="compare_evals.py --json output")
    ap.add_argument("--out", required=True, help="PNG")
    ap.add_argument("--title", default="")
    a = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pocketdiff.io import atomic_path

    rows = json.load(open(a.json))["rows"]
    psets = list(dict.fromkeys(r["prompt_set"] for r in rows))
    cols = columns({r["model"] for r in rows})
    if not cols:
        known = sorted({label for _, variants in ABLATIONS for label, _ in variants})
        raise SystemExit(f"{a.json}: no ablation has two of its variants here (labels: {', '.join(known)})")
    fig, axes = plt.subplots(len(psets), len(cols), figsize=(4.2 * len(cols), 3.8 * len(psets)), squeeze=False)

    seeds = max(len(r.get("seeds", [0])) for r in rows)  # seed sets pooled per point (compare_evals.py)

    def curve(ax, pset, label, name, style, color=None):
        pts = sorted((r for r in rows if r["model"] == label and r["prompt_set"] == pset and r["fid_mean"] is not None),
                     key=lambda r: r["guidance"])
        if not pts:
            return
        xs, ys = [100 * r["accuracy"] for r in pts], [r["fid_mean"] for r in pts]
        ax.plot(xs, ys, style, ms=3, lw=1.2, label=name, color=color)
        for i in (0, len(pts) - 1):
            ax.annotate(f"w={pts[i]['guidance']:g}", (xs[i], ys[i]), fontsize=6, textcoords="offset points",
                        xytext=(3, 3), color=color)

    for row, pset in zip(axes, psets):
        for ax, (title, variants) in zip(row, cols):
            for label, name, ls in REFERENCE:
                curve(ax, pset, label, name, ls + "o", color="0.55")
            for label, name in variants:
                curve(ax, pset, label, name, "o-")
            ax.set_title(f"{title}: {pset}", fontsize=9)
            ax.set_xlabel(f"compositional accuracy (%), {seeds} seed set(s)")
            ax.set_ylabel(f"domain FID (mean of {seeds})")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if a.title:
        fig.suptitle(a.title, fontsize=10)
    fig.tight_layout()
    with atomic_path(a.out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    print(a.out)


if __name__ == "__main__":
    main()
