"""Evaluation for the shapes world: an exact compositional judge and a domain FID.

The per-image `judge` function lives in `pocketdiff.evaluation.judge` (not re-exported, so that name stays the
module).
"""

from pocketdiff.evaluation.fid import DomainFID, domain_fid
from pocketdiff.evaluation.judge import detect_objects, evaluate, parse_prompt

__all__ = ["DomainFID", "detect_objects", "domain_fid", "evaluate", "parse_prompt"]
