"""Run an exported directory through the project's own pipeline: the scheduler loop stays in Python with diffusers'
schedulers (`sampling.pipeline.TextToImagePipeline`), each network call goes to the runtime.

The runtime networks stand in for the torch modules with the few attributes the loop reads (`config`, `dtype`,
`.sample` / `.last_hidden_state` outputs), so generation, evaluation and the demo share one code path."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .common import BACKEND, ExportError, read_manifest, require_runtime
from .runtimes import load_runner


class _Net:
    """A runtime network with a torch face: tensors in, tensors out (CPU, float32)."""

    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, runner):
        self.runner = runner

    def _run(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.runner(*[t.detach().cpu().numpy() for t in tensors])))

    def eval(self):
        return self

    def to(self, *args, **kwargs):
        return self


class RuntimeTextEncoder(_Net):
    def __init__(self, runner, hidden_size: int):
        super().__init__(runner)
        self.config = SimpleNamespace(hidden_size=hidden_size)

    def __call__(self, input_ids: torch.Tensor):
        return SimpleNamespace(last_hidden_state=self._run(input_ids.long()))


class RuntimeUNet(_Net):
    def __init__(self, runner, in_channels: int, sample_size: int):
        super().__init__(runner)
        self.config = SimpleNamespace(in_channels=in_channels, sample_size=sample_size)

    def __call__(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, **_):
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(sample.shape[0]).contiguous()
        return SimpleNamespace(sample=self._run(sample.float(), t, encoder_hidden_states.float()))


class RuntimeDecoder(_Net):
    def __init__(self, runner, scaling_factor: float):
        super().__init__(runner)
        self.config = SimpleNamespace(scaling_factor=scaling_factor)

    def decode(self, latents: torch.Tensor):
        return SimpleNamespace(sample=self._run(latents.float()))


def load_exported_pipeline(path: str | Path, scheduler: str | None = None, threads: int | None = None,
                           runtime: str | None = None):
    """An exported directory as a `TextToImagePipeline` (attribute `backend`: the runtime's name). `runtime`: run the
    graphs in another runtime that reads them; only "openvino" on an ONNX export (OpenVINO's CPU plugin compiles
    ONNX files directly, as `--backend auto` does)."""
    from transformers import AutoTokenizer

    from ..sampling.pipeline import TextToImagePipeline, make_scheduler

    root = Path(path)
    manifest = read_manifest(root)
    fmt = runtime or manifest["format"]
    if fmt != manifest["format"] and (manifest["format"], fmt) != ("onnx", "openvino"):
        raise ExportError(f"{root} is a {manifest['format']} export; {fmt} cannot run it (only OpenVINO reads another "
                          "format's files, ONNX)")
    require_runtime(fmt)
    if threads:
        torch.set_num_threads(threads)
    nets, shapes = manifest["networks"], manifest["shapes"]
    run = {n: load_runner(fmt, nets[n]["files"], root, threads) for n in nets}
    sched_cfg = json.loads(next((root / "scheduler").glob("*.json")).read_text())
    pipe = TextToImagePipeline(
        unet=RuntimeUNet(run["unet"], shapes["latent_channels"], shapes["latent_size"]),
        vae=RuntimeDecoder(run["decoder"], manifest["scaling_factor"]),
        text_encoder=RuntimeTextEncoder(run["text_encoder"], shapes["context_dim"]),
        tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer"),
        scheduler=make_scheduler(scheduler or manifest["default"]["scheduler"], sched_cfg))
    pipe.backend = BACKEND[fmt]
    pipe.manifest = manifest
    return pipe
