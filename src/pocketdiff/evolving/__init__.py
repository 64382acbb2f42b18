"""SnapFusion's architecture evolving: remove / copy blocks of a robust-trained FlexUNet, scored by dQuality / dLatency
from a latency lookup table (Algorithm 1). `actions` edits networks; `search` runs the loop and the dry run."""

from pocketdiff.evolving.actions import edit, evolvable
from pocketdiff.evolving.search import EvolveConfig, EvolveError, choose_actions, dry_run, evolve

__all__ = ["EvolveConfig", "EvolveError", "choose_actions", "dry_run", "edit", "evolvable", "evolve"]
