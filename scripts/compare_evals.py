"""Pool `pocketdiff eval --json` results over seed sets and compare models against a reference, paired per image.

    python scripts/compare_evals.py --ref teacher-ddim8@2=t0.json,t1000.json,t2000.json \
        --model student=s0.json,s1000.json,s2000.json [--model ...] [--json PATH] [--plot PNG]

Each --model / --ref is LABEL=FILE,FILE,...: the same model evaluated with different `--seed`s (one file per seed
set; FILE:SEED names the seed of a file written before results recorded it). For every (prompt set, w) of a model:
accuracy over all its images, with a 95% binomial interval, and FID (and CLIP score) as the mean over seed sets (FID
depends on the number of images, so it is computed per set of 200, never pooled). `--ref LABEL@W=...` compares each
model with the reference at guidance W on the same prompts and seeds: the change in points with a 95% interval from
the paired per-image differences (`pocketdiff.evaluation.suite.paired_change`), where both files carry per-image
verdicts (`correct`; older result files lack them), else from the two independent accuracies. `--plot`: FID against
accuracy and CLIP score, one curve per model over its w (`pocketdiff sweep`'s figure).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from pocketdiff.evaluation.suite import paired_change
from pocketdiff.io import write_json_atomic


def load(spec: str) -> tuple[str, float | None, dict]:
    """LABEL[@W]=a.json,b.json -> (label, W, {(prompt_set, w): {seed: result}})."""
    label, _, files = spec.partition("=")
    label, _, w = label.partition("@")
    runs: dict = defaultdict(dict)
    for item in files.split(","):
        path, _, given = item.partition(":")  # FILE:SEED for files written before results carried their seed
        for r in json.load(open(path))["results"]:
            key, seed = (r["prompt_set"], float(r["guidance"])), int(given) if given else r.get("seed", 0)
            if seed in runs[key]:
                raise SystemExit(f"{path}: {key} with seed {seed} appears twice in {label}")
            runs[key][seed] = r
    return label, (float(w) if w else None), runs


def pooled(by_seed: dict) -> dict:
    n = sum(r["n"] for r in by_seed.values())
    acc = sum(r["accuracy"] * r["n"] for r in by_seed.values()) / n
    half = 1.96 * np.sqrt(acc * (1 - acc) / n)
    mean = lambda key: (float(np.mean([r[key] for r in by_seed.values()]))
                        if all(r.get(key) is not None for r in by_seed.values()) else None)
    return {"accuracy": acc, "ci95": [acc - half, acc + half], "n": n, "seeds": sorted(by_seed),
            "fid_mean": mean("fid"), "clip_mean": mean("clip_score")}


def versus(model: dict, ref: dict) -> dict | None:
    seeds = sorted(set(model) & set(ref))
    if not seeds:
        return None
    if all(model[s].get("correct") and ref[s].get("correct") for s in seeds):
        out = paired_change([c for s in seeds for c in model[s]["correct"]], [c for s in seeds for c in ref[s]["correct"]])
        return {**out, "paired": True, "seeds": seeds}
    a, b = pooled({s: model[s] for s in seeds}), pooled({s: ref[s] for s in seeds})
    d = a["accuracy"] - b["accuracy"]
    half = 1.96 * np.sqrt(sum(p["accuracy"] * (1 - p["accuracy"]) / p["n"] for p in (a, b)))
    return {"change": d, "change_ci95": [d - half, d + half], "paired": False, "seeds": seeds, "n": a["n"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="LABEL=FILE,FILE,... (one file per seed set)")
    ap.add_argument("--ref", help="LABEL@W=FILE,...: the reference at guidance W")
    ap.add_argument("--json", help="write the table as JSON")
    ap.add_argument("--plot", help="FID against accuracy (and CLIP score), one curve per model over its w (PNG)")
    a = ap.parse_args()
    ref_label, ref_w, ref_runs = load(a.ref) if a.ref else (None, None, {})
    if a.ref and ref_w is None:
        raise SystemExit("--ref needs the reference's guidance: LABEL@W=FILE,...")
    rows = []
    for spec in ([a.ref] if a.ref else []) + a.model:
        label, _, runs = load(spec)
        for (pset, w), by_seed in sorted(runs.items()):
            row = {"model": label, "prompt_set": pset, "guidance": w, **pooled(by_seed)}
            if ref_label and label != ref_label and (pset, ref_w) in ref_runs:
                row["vs_ref"] = versus(by_seed, ref_runs[(pset, ref_w)])
            rows.append(row)
    print("| model | prompts | w | seeds | accuracy (95%) | FID (mean) | vs " + (f"{ref_label} w {ref_w:g}" if ref_label
          else "-") + " |\n|---|---|---|---|---|---|---|")
    for r in rows:
        v = r.get("vs_ref")
        vs = "-" if not v else (f"{100 * v['change']:+.1f} ({100 * v['change_ci95'][0]:+.1f}, "
                                f"{100 * v['change_ci95'][1]:+.1f}){'' if v['paired'] else ' unpaired'}")
        fid = "-" if r["fid_mean"] is None else f"{r['fid_mean']:.1f}"
        print(f"| {r['model']} | {r['prompt_set']} | {r['guidance']:g} | {len(r['seeds'])} | {100 * r['accuracy']:.1f}% "
              f"({100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}) | {fid} | {vs} |")
    if a.json:
        write_json_atomic(a.json, {"ref": a.ref, "models": a.model, "rows": rows})
    if a.plot:
        from pocketdiff.evaluation.sweep import plot_sweep

        curves = {}
        for r in rows:
            curves.setdefault(r["model"], []).append({"prompt_set": r["prompt_set"], "guidance": r["guidance"],
                                                      "accuracy": r["accuracy"], "fid": r["fid_mean"],
                                                      "clip_score": r["clip_mean"]})
        plot_sweep([{"label": k, "points": v} for k, v in curves.items()], a.plot)


if __name__ == "__main__":
    main()
