"""Registry of training stages: `pocketdiff train NAME` trains `STAGES[NAME]`.

Add a stage in one line: `STAGES["teacher"] = TeacherStage` (a `pocketdiff.training.loop.Stage` subclass with its
`Options` dataclass); the CLI gets a `pocketdiff train teacher` command from it.
"""

from __future__ import annotations

from pocketdiff.errors import PocketDiffError
from pocketdiff.training.loop import Stage
from pocketdiff.training.stages.clip import CLIPStage
from pocketdiff.training.stages.decoder import DecoderStage
from pocketdiff.training.stages.distill import DistillStage
from pocketdiff.training.stages.tokenizer import TokenizerStage
from pocketdiff.training.stages.student import StudentStage
from pocketdiff.training.stages.teacher import TeacherStage
from pocketdiff.training.stages.ufogen import UFOGenStage
from pocketdiff.training.stages.vae import VAEStage
from pocketdiff.training.stages.vpred import VPredStage

STAGES: dict[str, type[Stage]] = {
    "tokenizer": TokenizerStage,
    "clip": CLIPStage,
    "vae": VAEStage,
    "teacher": TeacherStage,
    "vpred": VPredStage,
    "decoder": DecoderStage,
    "distill": DistillStage,
    "student": StudentStage,
    "ufogen": UFOGenStage,
}


class UnknownStageError(PocketDiffError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get_stage(name: str) -> type[Stage]:
    if name not in STAGES:
        raise UnknownStageError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
    return STAGES[name]


__all__ = ["STAGES", "Stage", "UnknownStageError", "get_stage"]
