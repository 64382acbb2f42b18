"""SnapFusion's guidance sweep, as data and a figure: the table rows (one point per model and prompt set) and the
FID-vs-accuracy / FID-vs-CLIP curves (what `pocketdiff sweep` and `scripts/compare_evals.py` draw)."""

from __future__ import annotations

from pathlib import Path

from pocketdiff.io import atomic_path


def parse_floats(values: list[str]) -> list[float]:
    """'1,2,3' or '1.0:10.5:0.5' (start:stop:step, inclusive) or repeated options."""
    from pocketdiff.validation import OptionError

    out = []
    for v in values:
        for part in v.split(","):
            try:
                if ":" in part:
                    a, b, s = (float(x) for x in part.split(":"))
                    if not s > 0 or not b >= a or (b - a) / s > 1000:
                        raise ValueError
                    n = int(round((b - a) / s))
                    out += [round(a + i * s, 6) for i in range(n + 1)]
                elif part.strip():
                    out.append(float(part))
            except ValueError:
                raise OptionError(f"--guidance {v!r}: expected numbers: 3 | 1,3,7.5 | START:STOP:STEP (STEP > 0, "
                                  "STOP >= START)") from None
    if not out:
        raise OptionError(f"--guidance {','.join(values)!r}: no value given")
    return out


def table_rows(models: list[dict], table_guidance: float | None = None) -> list[dict]:
    """One row per (model, prompt set): the point at `table_guidance` (nearest swept value) or the lowest-FID one
    (highest accuracy where FID is unavailable)."""
    rows = []
    for m in models:
        for pset in dict.fromkeys(p["prompt_set"] for p in m["points"]):
            pts = [p for p in m["points"] if p["prompt_set"] == pset]
            if table_guidance is not None:
                best = min(pts, key=lambda p: abs(p["guidance"] - table_guidance))
            elif all(p["fid"] is not None for p in pts):
                best = min(pts, key=lambda p: p["fid"])
            else:
                best = max(pts, key=lambda p: p["accuracy"])
            rows.append({"label": m["label"], "steps": m["steps"], "scheduler": m["scheduler"], "prompt_set": pset,
                         "guidance": best["guidance"], "fid": best["fid"], "clip_score": best["clip_score"],
                         "accuracy": best["accuracy"], "unet_ms": best["latency_ms"].get("unet_total")})
    return rows


def plot_sweep(models: list[dict], path: str | Path) -> Path:
    """One row of panels per prompt set: FID (y, lower is better) against accuracy and against CLIP score (x),
    one curve per model, guidance written at the ends of each curve (SnapFusion's FID-vs-CLIP figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    psets = list(dict.fromkeys(p["prompt_set"] for m in models for p in m["points"]))
    fig, axes = plt.subplots(len(psets), 2, figsize=(12, 4.6 * len(psets)), squeeze=False)
    for row, pset in zip(axes, psets):
        for ax, key, name in ((row[0], "accuracy", "compositional accuracy"), (row[1], "clip_score", "domain CLIP score")):
            drawn = False
            for m in models:
                pts = sorted((p for p in m["points"] if p["prompt_set"] == pset and p["fid"] is not None
                              and p[key] is not None), key=lambda p: p["guidance"])
                if not pts:
                    continue
                xs = [100 * p[key] if key == "accuracy" else p[key] for p in pts]
                ax.plot(xs, [p["fid"] for p in pts], "o-", ms=3, label=m["label"])
                for i in {0, len(pts) - 1}:
                    ax.annotate(f"w={pts[i]['guidance']:g}", (xs[i], pts[i]["fid"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3))
                drawn = True
            ax.set_xlabel(name + (" (%)" if key == "accuracy" else ""))
            ax.set_ylabel("domain FID")
            ax.set_title(f"{pset}: FID vs {name}")
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, f"no {name} (FID or {key} unavailable)", ha="center", va="center",
                        transform=ax.transAxes)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


__all__ = ["parse_floats", "plot_sweep", "table_rows"]
