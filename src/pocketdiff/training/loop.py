"""The one trainer core: a `Stage` says what to train, `train()` trains it (nanoGPT-short, through Accelerate).

    stage = STAGES["vae"](cfg)          # cfg: TrainConfig from pocketdiff.training.config.load_config
    summary = train(stage, cfg, out_dir="runs/vae", resume=False)

Per optimiser step: for each micro-batch, the next batch of the DataLoader over `stage.dataset()` ->
`stage.compute_loss(models, frozen, batch)` -> backward; then clip, AdamW step, EMA update, log, sample/eval/checkpoint
on their schedules. At the end: final checkpoint, `stage.evaluate` on the EMA weights, `stage.export` of the EMA weights
to `cfg.export_dir`.

Data: a `torch.utils.data.DataLoader` prepared by Accelerate (micro-batches sharded over processes; `batch_size` is
per process). The stage's dataset is indexed by the run's global sample number (`pocketdiff.data.stream`: example i is
a pure function of (seed, i), its randomness included), read through `IndexSampler(samples_seen)`. We chose that over
Accelerate's `skip_first_batches` for map-style data because resuming is then O(1) and the stream does not depend on
the number of processes: 2 processes x batch B train on exactly the samples of 1 process x batch 2B. Streaming
(Iterable) datasets are resumed with `accelerator.skip_first_batches`.

Exact resume: the data position is the checkpointed sample count, the learning rate is a pure function of the step,
and every process's torch RNG state is checkpointed, so k steps + resume + (N-k) steps gives the same weights as N
steps in one go (tests/training/test_loop.py, and under 2 processes tests/training/test_multiprocess.py). Sampling and
evaluation run under `torch.random.fork_rng()` with their own numpy generator, so they never shift the training stream.

Several processes (`accelerate launch --num_processes P -m pocketdiff.cli train STAGE ...`): each trainable module is
prepared by Accelerate (DDP), so gradients are averaged and the weights stay identical on every process; under FSDP
(Accelerate's FSDP2, for the stages with `Stage.fsdp`: one module, every parameter used every step) the module and the
EMA are sharded, and checkpoints, side tasks and the export read full state dicts gathered to the main process. The
main process alone holds the run-directory lock, writes checkpoints (our format, atomic: the weights are the same
everywhere, the per-process RNG states are gathered to it), logs, samples, evaluates and exports (once). A stop
request (Ctrl-C / SIGTERM on any process, `max_minutes`) is agreed between the processes each step.
At each checkpoint the processes' weights are compared (`weight_fingerprint`; `OutOfSyncError` if they differ) and
the bad examples the data source dropped ("skipped" in each batch) are summed over processes into `data_skipped`
(checkpointed: a resume continues the count).

Ctrl-C / SIGTERM (e.g. `kill PID` of a nohup run) finishes the current step, checkpoints and returns with
stopped="interrupted" without exporting; `--resume` continues exactly from there.

Threads: `torch.set_num_threads(cfg.num_threads or all cores)`. `OMP_WAIT_POLICY=PASSIVE` (see
shared/reference/measured.md: 3-8x slowdowns on a shared 2-core machine without it) must be in the environment
before torch is first imported; `pocketdiff.cli.train` sets it at import time if it is unset.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from pocketdiff.data.batches import count_skipped
from pocketdiff.errors import ConfigError, DataError, PocketDiffError, WeightsError
from pocketdiff.io import fsync_dir, recover_dir, write_png_atomic, write_text_atomic
from pocketdiff.training.config import TrainConfig

CHECKPOINT, CHECKPOINT_TMP, CHECKPOINT_OLD = "checkpoint", "ckpt.tmp", "checkpoint.old"
LOCK = ".lock"


class DivergedError(PocketDiffError):
    """The loss (or the gradient norm, or a weight) became non-finite: the run stops without exporting."""


class RunDirBusyError(PocketDiffError):
    """Another trainer holds the run directory's lock."""


class OutOfSyncError(PocketDiffError):
    """Under several processes, the trained weights differ between processes (checked at every checkpoint)."""


def default_export_dir(run_dir: str | Path, export_dir: str | Path) -> Path:
    """Where a run exports when the user names no export directory: RUN/export/NAME, NAME the last part of the
    config's `export_dir` (e.g. runs/teacher/export/unet), so that no run replaces a shipped model by default."""
    return Path(run_dir) / "export" / Path(export_dir).name


class Stage(ABC):
    """One trainable component of the pipeline. Subclass it, set `name` and `Options`, register it in
    `pocketdiff.training.stages.STAGES`.

    - `build()`: the trainable modules, by name (they are trained, EMA'd and checkpointed as one ModuleDict);
      `{}` for a stage with nothing to optimise (e.g. the tokenizer): then `train` only exports.
    - `build_frozen()`: frozen context (a teacher, a VAE, a text encoder); moved to the device, eval, no grad.
    - `dataset()`: the run's training examples (dicts): a map-style dataset indexed by the global sample number,
      `ds[i]` a pure function of (cfg.seed, i) (build it with `pocketdiff.data.stream.seeded_stream`), or an endless
      IterableDataset (streaming). `collate(examples)` makes a micro-batch of `cfg.batch_size` of them (default:
      `pocketdiff.data.stream.collate`); tensors are moved to the device. `batch_at(i)` is the micro-batch of
      examples i..i+batch_size-1 (tests, benchmarks).
    - `compute_loss(models, frozen, batch) -> (loss, logs)`: logs are floats, averaged into log.jsonl.
    - `sample(models, frozen, rng)`: optional uint8 HxWx3 grid, saved as samples/step_XXXXXX.png.
    - `evaluate(models, frozen)`: optional metrics dict, every `eval_every` steps and at the end (EMA weights).
    - `export(models, frozen, export_dir)`: write the deployable component (e.g. `save_pretrained`).
    """

    name: ClassVar[str] = ""
    # DDP: True for stages whose step leaves some trainable parameters without a gradient (dropped blocks, a
    # discriminator updated every k steps); costs a graph traversal per step
    find_unused_parameters: ClassVar[bool] = False
    # FSDP (Accelerate's FSDP2) can shard this stage: it trains one module, called through its forward, and every
    # parameter takes a gradient every step (each process's backward reduces the same parameter groups)
    fsdp: ClassVar[bool] = False

    @dataclass
    class Options:
        """Stage-specific config (`options:` in the YAML). Subclasses replace it."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.opts = cfg.options
        self.step = 0  # the optimiser step being computed (set by `train` before each step's batches)

    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """The trainable modules by name; {} when there is nothing to optimise."""

    def build_frozen(self) -> dict[str, nn.Module]:
        return {}

    def dataset(self) -> torch.utils.data.Dataset:
        # required only of stages whose build() returns trainable modules (the tokenizer's has none)
        raise NotImplementedError(f"stage {self.name!r} has trainable modules but defines no dataset")

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        from pocketdiff.data.stream import collate

        return collate(examples)

    def batch_at(self, start: int = 0, dataset=None) -> dict[str, Any]:
        """The micro-batch of examples start .. start + batch_size - 1 of a map-style `dataset()`."""
        ds = dataset if dataset is not None else self.dataset()
        return self.collate([ds[i] for i in range(start, start + self.cfg.batch_size)])

    def compute_loss(
        self, models: nn.ModuleDict, frozen: dict[str, nn.Module], batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError(f"stage {self.name!r} has trainable modules but defines no compute_loss")

    def sample(self, models: nn.ModuleDict, frozen: dict[str, nn.Module], rng: np.random.Generator) -> np.ndarray | None:
        return None

    def optimizer_groups(self) -> dict[str, dict] | None:
        """Optional per-module optimiser settings, by `build()` name: {"generator": {}, "discriminator": {"betas":
        (0.0, 0.999), "lr_scale": 1.0}} (a GAN's two Adams in one optimiser). When given, each named module's
        gradients are clipped on their own (`grad_clip`) and logged as grad_norm_NAME. None: one group for all."""
        return None

    def evaluate(self, models: nn.ModuleDict, frozen: dict[str, nn.Module]) -> dict[str, float]:
        return {}

    def fsdp_refusal(self) -> str | None:
        """Why FSDP cannot shard this run (None: it can); by default the class's `fsdp` flag decides."""
        if self.fsdp:
            return None
        return "FSDP needs one trained module whose every parameter takes a gradient on every process each step"

    @abstractmethod
    def export(self, models: nn.ModuleDict, frozen: dict[str, nn.Module], export_dir: Path) -> None:
        """Write the deployable component into export_dir."""


def call_method(module: nn.Module, method: str, *args, **kwargs):
    """`module.<method>(*args)` through the module's DDP wrapper when it has one (under several processes
    `compute_loss` gets the wrapped modules): DDP averages the gradients of what runs inside its forward only, so a
    stage that trains through another method (a VAE's `encode` / `decode`) calls it this way."""
    inner = getattr(module, "module", None)
    if inner is None:
        return getattr(module, method)(*args, **kwargs)
    saved = inner.__dict__.get("forward")  # Accelerate may have patched an instance forward (mixed precision)
    inner.forward = getattr(inner, method)
    try:
        return module(*args, **kwargs)
    finally:
        if saved is None:
            del inner.forward
        else:
            inner.forward = saved


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to `min_lr` at `max_steps` (nanoGPT)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


class EMA:
    """ema <- d * ema + (1 - d) * param, with d = min(decay, (1 + step) / (10 + step)) so short runs are not stuck at
    their initial weights. Ours rather than diffusers' EMAModel: the EMA is just a second copy of the ModuleDict, so
    it is checkpointed with the same safetensors code as the model, and export takes it as-is."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach().to(e.dtype), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)


# --------------------------------------------------------------------------------------------- checkpoints


def find_checkpoint(run_dir: Path) -> Path | None:
    """`checkpoint/`, or `checkpoint.old/` if a crash hit between the two renames of `save_checkpoint`."""
    for name in (CHECKPOINT, CHECKPOINT_OLD):
        if (run_dir / name / "state.json").is_file():
            return run_dir / name
    return None


def rng_states(accelerator=None) -> dict[str, torch.Tensor]:
    """This process's torch RNG states, or with `accelerator` every process's (gathered; a collective: every process
    calls it): "torch_cpu" / "torch_cuda" for process 0, "torch_cpu.K" / "torch_cuda.K" for process K."""
    mine = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["torch_cuda"] = torch.cuda.get_rng_state()
    if accelerator is None or accelerator.num_processes == 1:
        return mine
    out = {}
    for key, state in mine.items():
        every = accelerator.gather(state.to(accelerator.device)[None]).cpu()  # [P, n] uint8
        out.update({key if k == 0 else f"{key}.{k}": every[k] for k in range(len(every))})
    return out


def weight_fingerprint(module: nn.Module) -> torch.Tensor:
    """[tensors] int64: per parameter and buffer, the sum of its elements' bit patterns (as integers). Cheap (no copy
    off the device) and exact: a change to any one element changes it; compared between processes at checkpoints."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    sums = [t.detach().contiguous().view(ints[t.element_size()]).sum(dtype=torch.int64)
            for t in [*module.parameters(), *module.buffers()]]
    return torch.stack(sums) if sums else torch.zeros(1, dtype=torch.int64)


def save_optimizer_state(sd: dict, ckpt: Path) -> None:
    """An optimizer's `state_dict()` without pickle: its tensors in optimizer.safetensors (keyed
    `state.{param}.{name}`, param an index, or under FSDP a parameter name), everything else (param groups, non-tensor
    state) in optimizer.json."""
    tensors, plain = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                plain[f"{idx}.{name}"] = value
    save_file(tensors, str(ckpt / "optimizer.safetensors"))
    (ckpt / "optimizer.json").write_text(json.dumps({"param_groups": sd["param_groups"], "state": plain}))


def load_optimizer_state(ckpt: Path) -> dict:
    """Inverse of `save_optimizer_state`."""
    from pocketdiff.loading import load_safetensors, read_json

    meta = read_json(ckpt / "optimizer.json", error=WeightsError)
    state: dict[int, dict] = {}
    for key, value in load_safetensors(ckpt / "optimizer.safetensors").items():
        idx, _, name = key.removeprefix("state.").rpartition(".")
        state.setdefault(int(idx) if idx.isdigit() else idx, {})[name] = value
    for key, value in meta["state"].items():
        idx, _, name = key.rpartition(".")
        state.setdefault(int(idx) if idx.isdigit() else idx, {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def optimizer_state_keyed(sd: dict, model: nn.Module, optimizer, by_name: bool) -> dict:
    """An optimizer state dict keyed by parameter index (`optimizer.state_dict()`: one process, DDP) or by parameter
    name (FSDP's full state dict), converted to the other when needed, so that a run checkpointed under FSDP resumes
    under DDP and the other way round. Index i is the i-th parameter of the optimizer's groups, in order."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names.get(id(p), i) for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])]
    if by_name:
        convert = {i: n for i, n in enumerate(order)}
    else:
        convert = {n: i for i, n in enumerate(order)}
    if all((k in convert) for k in sd["state"]) and all(k in convert for g in sd["param_groups"] for k in g["params"]):
        return {"state": {convert[k]: v for k, v in sd["state"].items()},
                "param_groups": [{**g, "params": [convert[k] for k in g["params"]]} for g in sd["param_groups"]]}
    return sd  # already keyed as asked (or not this model's: the load names the mismatch)


def save_checkpoint(run_dir: Path, model: nn.Module, ema: EMA | None, optimizer, state: dict,
                    rng: dict[str, torch.Tensor] | None = None, full: dict[str, dict] | None = None) -> Path:
    """Write to ckpt.tmp/, then swap it in with renames: a crash leaves either the old or the new checkpoint.
    `rng`: the RNG states to store (default: this process's, `rng_states()`). `full`: the full state dicts
    {"model", "optimizer"[, "ema"]} to store instead of reading the modules (FSDP: `_full_state_dicts`)."""
    tmp, final, old = run_dir / CHECKPOINT_TMP, run_dir / CHECKPOINT, run_dir / CHECKPOINT_OLD
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if full is None:
        save_model(model, str(tmp / "model.safetensors"))
        if ema is not None:
            save_model(ema.model, str(tmp / "ema.safetensors"))
        save_optimizer_state(optimizer.state_dict(), tmp)
    else:
        for name in ("model", "ema"):
            if name in full:
                save_file({k: v.contiguous() for k, v in full[name].items()}, str(tmp / f"{name}.safetensors"))
        save_optimizer_state(full["optimizer"], tmp)
    save_file({k: v.contiguous() for k, v in (rng if rng is not None else rng_states()).items()},
              str(tmp / "rng.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():  # the data reaches the disk before the renames that publish it
        fsync_dir(f)
    fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model: nn.Module, ema: EMA | None, optimizer, process_index: int = 0,
                    sharded: bool = False) -> dict:
    """Restore weights and optimizer state (safetensors + JSON, nothing unpickled) and this process's RNG; return
    state.json. A missing, truncated or corrupt file is named. `sharded` (FSDP): every process reads the full state
    dicts and keeps its shards (torch.distributed.checkpoint's `set_model_state_dict` / `set_optimizer_state_dict`)."""
    from pocketdiff.loading import check_safetensors, load_safetensors, read_json

    fix = "use a new --out or drop --resume"
    state = read_json(ckpt / "state.json", error=WeightsError)
    if not isinstance(state, dict) or not {"step", "elapsed_s", "samples_seen"} <= set(state):
        raise WeightsError(f"{ckpt / 'state.json'}: not a checkpoint state (corrupt?); {fix}")
    names = ["model.safetensors", "rng.safetensors", "optimizer.safetensors"] + (["ema.safetensors"] if (ckpt / "ema.safetensors").is_file() else [])
    for name in names:
        check_safetensors(ckpt / name)
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        def load_into(module: nn.Module, path: Path) -> None:
            set_model_state_dict(module, load_safetensors(path), options=StateDictOptions(full_state_dict=True))
    else:
        def load_into(module: nn.Module, path: Path) -> None:
            load_model(module, str(path))
    try:
        load_into(model, ckpt / "model.safetensors")
        if ema is not None:
            has_ema = (ckpt / "ema.safetensors").is_file()
            load_into(ema.model, ckpt / ("ema.safetensors" if has_ema else "model.safetensors"))
    except (RuntimeError, ValueError, KeyError) as e:
        raise WeightsError(f"{ckpt}: checkpoint does not fit this config ({e}); {fix}") from None
    try:
        saved = optimizer_state_keyed(load_optimizer_state(ckpt), model, optimizer, by_name=sharded)
        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, saved, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(saved)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - a state from another config raises many types
        raise WeightsError(f"{ckpt / 'optimizer.safetensors'}: does not fit this config "
                           f"({' '.join(str(e).split())[:200]}); {fix}") from None
    rng = load_safetensors(ckpt / "rng.safetensors")
    if "torch_cpu" not in rng or rng["torch_cpu"].dtype != torch.uint8:
        raise WeightsError(f"{ckpt / 'rng.safetensors'}: no torch RNG state (corrupt?); {fix}")
    suffix = f".{process_index}" if process_index else ""
    if f"torch_cpu{suffix}" not in rng:  # resumed with more processes than the checkpoint was written by
        warnings.warn(f"{ckpt}: no RNG state for process {process_index}: it continues from process 0's",
                      stacklevel=2)
        suffix = ""
    try:
        torch.set_rng_state(rng[f"torch_cpu{suffix}"])
    except RuntimeError as e:
        raise WeightsError(f"{ckpt / 'rng.safetensors'}: not a valid RNG state ({e}); {fix}") from None
    if torch.cuda.is_available() and f"torch_cuda{suffix}" in rng:
        torch.cuda.set_rng_state(rng[f"torch_cuda{suffix}"])
    return state


# --------------------------------------------------------------------------------------------- the loop


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _make_accelerator(mixed_precision: str, find_unused_parameters: bool = False):
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, GradientState

    # Accelerate keeps process-wide singletons; several train() calls in one process (tests) need a fresh state.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(mixed_precision),
        # a streaming dataset is read by every process, each keeping its slice of each global batch (batches hold
        # captions, which Accelerate's dispatching from the main process cannot broadcast)
        dataloader_config=DataLoaderConfiguration(dispatch_batches=False),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)])
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn("mixed_precision: bf16 on a CPU without avx512_bf16 / amx_bf16: bf16 is emulated there, "
                      "~13x slower than fp32 (the VAE stage, AMD EPYC Zen 3: 13.5 s against 1.0 s a step); "
                      "use --set 'mixed_precision=\"no\"'", stacklevel=3)
    return accelerator


def resolve_mixed_precision(mixed_precision: str) -> str:
    """`auto` -> bf16 where the run goes to a GPU with bf16, else "no" (fp32). Our choice: on CPUs fp32 was as fast
    or faster for the shapes UNets even on a Zen 4 with avx512_bf16 (benchmarks/train_step.py), and bf16 is emulated,
    ~13x slower, on CPUs without it; on GPUs bf16 autocast is the usual default for SD training."""
    if mixed_precision != "auto":
        return mixed_precision
    import torch
    from accelerate import PartialState

    device = PartialState().device  # where Accelerate will put the run (honours ACCELERATE_USE_CPU, multi-GPU ranks)
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (x86: avx512_bf16 or amx_bf16; other CPUs: assume it does)."""
    from pocketdiff.profiling.latency import machine_info

    isa = machine_info()["isa"]
    return not isa or "avx512_bf16" in isa or "amx_bf16" in isa


class _JsonLog:
    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_step is None:
            path.write_text("")
        elif path.exists():  # drop rows logged after the checkpoint we resume from, and a line torn by a kill
            rows = []
            for r in path.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(r)
                except ValueError:
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= resume_step:
                    rows.append(r)
            write_text_atomic(path, "".join(r + "\n" for r in rows))

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


class _GracefulStop:
    """SIGINT / SIGTERM while training: finish the current step, checkpoint, and return with
    stopped="interrupted" (no export); `--resume` continues exactly. A second Ctrl-C aborts at once (the last
    regular checkpoint stays valid: checkpoints are only written between steps)."""

    def __init__(self) -> None:
        self.requested, self._old = False, {}

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step and checkpointing "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _RunDirLock:
    """An exclusive lock on RUN/.lock (flock: the kernel drops it when the process dies, even by SIGKILL), so that a
    second trainer on the same run directory refuses at once instead of mixing checkpoints and logs."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.file = run_dir, None

    def __enter__(self) -> _RunDirLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.file = open(self.run_dir / LOCK, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise RunDirBusyError(f"{self.run_dir} is in use by another trainer (pid {holder}): wait for it to "
                                  "finish, or give this run another --out") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing the descriptor releases the lock


def _check_in_sync(accelerator, model: nn.Module, step: int) -> None:
    """Every process's weights against process 0's (`weight_fingerprint`, gathered: a collective). DDP keeps them
    identical; they drift apart when a stage changes a trainable weight outside the prepared modules' forward /
    backward (e.g. in place on one process only). Raised on every process alike (they all see the gathered rows)."""
    every = accelerator.gather(weight_fingerprint(model).to(accelerator.device)[None]).cpu()  # [P, tensors]
    differ = [k for k in range(1, len(every)) if not torch.equal(every[k], every[0])]
    if differ:
        raise OutOfSyncError(f"training stopped at step {step}: the weights of process(es) {differ} differ from "
                             "process 0's, so the processes no longer train the same model (a stage changed a "
                             "trainable weight outside the prepared modules, or one process loaded other weights). "
                             "Nothing was exported or checkpointed at this step; the last checkpoint is the last good "
                             "state: fix the stage, then --resume")


def _all_finite(module: nn.Module) -> bool:
    """Every floating-point weight finite (of a sharded module: this process's shards)."""
    return all(bool(torch.isfinite(getattr(t, "to_local", lambda t=t: t)()).all())
               for t in [*module.parameters(), *module.buffers()] if t.is_floating_point())


def _full_state_dicts(model: nn.Module, ema: EMA | None, optimizer) -> dict[str, dict]:
    """A sharded (FSDP) run's full state dicts, gathered to the main process, on its CPU ({} elsewhere): a collective
    (torch.distributed.checkpoint's state-dict API, which `accelerator.get_state_dict` calls for FSDP2). The optimizer
    state is keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = {"model": get_model_state_dict(model, options=options),
            "optimizer": get_optimizer_state_dict(model, optimizer, options=options)}
    if ema is not None:
        full["ema"] = get_model_state_dict(ema.model, options=options)
    return full


def _diverged(run_dir: Path, step: int, what: str, lr: float) -> DivergedError:
    ckpt = find_checkpoint(run_dir)
    last = "no checkpoint was written yet"
    if ckpt is not None:
        last = f"the last good checkpoint is {ckpt} (step {json.loads((ckpt / 'state.json').read_text())['step']})"
    return DivergedError(f"training diverged at step {step}: {what}. Stopped; nothing was exported and no "
                         f"non-finite weights were saved; {last}. Lower the learning rate (lr was {lr:.3g} at this "
                         "step: --set lr=...) and --resume, or start again with a new --out")


def train(stage: Stage, cfg: TrainConfig, out_dir: str | Path | None = None, resume: bool = False) -> dict:
    """Train `stage` per `cfg`; checkpoints and log.jsonl go to `out_dir` (default `cfg.run_dir`), the exported
    component to `cfg.export_dir`. Returns a summary dict (also written to `out_dir/summary.json`).
    The run directory is locked for the run (a second trainer on it gets `RunDirBusyError`); a non-finite loss,
    gradient norm or weight stops the run with `DivergedError` (nothing exported)."""
    run_dir = Path(out_dir) if out_dir is not None else cfg.run_dir
    new = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) != 0:  # `accelerate launch`: the main process holds the lock
        return _train(stage, cfg, run_dir, resume)
    recover_dir(Path(cfg.export_dir))  # a crash inside publish_dir's fallback (non-Linux) left NAME.old
    try:
        with _RunDirLock(run_dir):
            return _train(stage, cfg, run_dir, resume)
    except PocketDiffError as e:
        # bad input found while building (a data folder, a model directory): leave no half-made run directory
        if new and not isinstance(e, (DivergedError, OutOfSyncError, RunDirBusyError)) and find_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _data_loader(dataset, stage: Stage, cfg: TrainConfig, accelerator, samples_seen: int):
    """The DataLoader over the stage's examples, prepared by Accelerate (sharded over processes), positioned after
    the `samples_seen` samples the run has consumed (all processes together)."""
    from torch.utils.data import DataLoader, IterableDataset

    from pocketdiff.data.stream import IndexSampler

    # its own generator: a DataLoader draws its workers' base seed when iterated, which must not shift the torch RNG
    kw = {"batch_size": cfg.batch_size, "collate_fn": stage.collate, "num_workers": cfg.num_workers,
          "generator": torch.Generator().manual_seed(cfg.seed)}
    if not isinstance(dataset, IterableDataset):
        # map-style, indexed by the global sample number: restart the index stream where the run stands (O(1))
        return accelerator.prepare_data_loader(DataLoader(dataset, sampler=IndexSampler(samples_seen), **kw))
    loader = DataLoader(dataset, **kw)
    if not getattr(dataset, "splits_by_process", False):  # else each process reads its own part of the stream
        loader = accelerator.prepare_data_loader(loader)
    consumed = samples_seen // (cfg.batch_size * accelerator.num_processes)  # this process's micro-batches
    return accelerator.skip_first_batches(loader, consumed) if consumed else loader


def _train(stage: Stage, cfg: TrainConfig, run_dir: Path, resume: bool) -> dict:
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.num_threads or _cpu_count())
    accelerator = _make_accelerator(cfg.mixed_precision, stage.find_unused_parameters)
    device, main, nproc = accelerator.device, accelerator.is_main_process, accelerator.num_processes
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != nproc:  # e.g. an FSDP launch config on a machine without GPUs: every process would think it is alone
        raise ConfigError(f"{launched} processes were launched but Accelerate set up {nproc} "
                          f"({accelerator.distributed_type.value}); on CPUs launch with `--multi_gpu` and "
                          "ACCELERATE_USE_CPU=true (DDP over gloo); FSDP needs GPUs")
    fsdp = accelerator.distributed_type.value == "FSDP"
    if fsdp and not accelerator.is_fsdp2:
        raise ConfigError("FSDP: the trainer runs Accelerate's FSDP2 (`fsdp_version: 2` in the launch config, as in "
                          "pocketdiff/configs/accelerate/fsdp-8gpu.yaml); this launch asks for FSDP1")
    if fsdp and (reason := stage.fsdp_refusal()):
        raise ConfigError(f"FSDP: stage {stage.name!r} cannot be sharded ({reason}); launch it with DDP "
                          "(pocketdiff/configs/accelerate/ddp-8gpu.yaml)")
    if main:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # 1. models: trainable (one ModuleDict, EMA'd and checkpointed; each module prepared, e.g. DDP), frozen context
    torch.manual_seed(cfg.seed)
    model = nn.ModuleDict(stage.build())
    frozen = {k: m.to(device).eval().requires_grad_(False) for k, m in stage.build_frozen().items()}
    if accelerator.process_index:  # the same initial weights everywhere, then each process its own torch stream
        torch.manual_seed(cfg.seed + 1_000_003 * accelerator.process_index)
    step, elapsed, stopped, samples_seen = 0, 0.0, "max_steps", 0
    # bad examples the data source dropped (`skipped` in a batch): this process's since the start or resume, and the
    # run's total (all processes, counted at each checkpoint: a resume continues it)
    skipped_here, data_skipped = 0, 0
    samples_per_step = cfg.batch_size * nproc * cfg.grad_accum_steps
    trainable = any(p.requires_grad for p in model.parameters())

    if trainable:
        # FSDP: what side tasks and the export read, the full weights, on the main process (sharded modules are not
        # callable by one process alone)
        template = copy.deepcopy(model).requires_grad_(False).eval().to(device) if fsdp and main else None
        model.to(device)
        ema = EMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None
        per_module = stage.optimizer_groups()
        groups = []
        for name, extra in (per_module or {None: {}}).items():
            decay, no_decay = [], []  # no weight decay on biases, norm weights, scalars (< 2-D tensors)
            for p in (model if name is None else model[name]).parameters():
                if p.requires_grad:
                    (decay if p.dim() >= 2 else no_decay).append(p)
            groups += [{"params": decay, "weight_decay": cfg.weight_decay, **extra},
                       {"params": no_decay, "weight_decay": 0.0, **extra}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
        # what compute_loss calls: the prepared modules (DDP / FSDP wrappers: gradients averaged over processes);
        # `model` stays the plain ModuleDict that EMA, checkpoints and export read (same parameters)
        names = [k for k, m in model.items() if any(p.requires_grad for p in m.parameters())]
        if fsdp and len(names) != 1:
            raise ConfigError(f"FSDP: stage {stage.name!r} trains {len(names)} modules ({', '.join(names)}); "
                              "Accelerate's FSDP2 shards one per run: launch it with DDP")
        *prepared, optimizer = accelerator.prepare(*(model[k] for k in names), optimizer)
        wrapped = nn.ModuleDict({k: prepared[names.index(k)] if k in names else m for k, m in model.items()})
        if ema is not None:
            ema.model.to(device)
            if fsdp:  # the EMA sharded as the model is (each parameter split on dim 0): its update stays local
                from torch.distributed.fsdp import fully_shard

                fully_shard(ema.model[names[0]], mesh=next(model[names[0]].parameters()).device_mesh)

        # 2. resume
        ckpt = find_checkpoint(run_dir) if resume else None
        if resume and ckpt is None:
            warnings.warn(f"--resume: no checkpoint in {run_dir}; starting from step 0", stacklevel=2)
        if ckpt is not None:
            state = load_checkpoint(ckpt, model, ema, optimizer, accelerator.process_index, sharded=fsdp)
            step, elapsed, samples_seen = state["step"], state["elapsed_s"], state["samples_seen"]
            data_skipped = state.get("data_skipped", 0)
            if not isinstance(samples_seen, int) or samples_seen < 0:
                raise WeightsError(f"{ckpt / 'state.json'}: corrupt samples_seen {samples_seen!r}; use a new --out")
        log = _JsonLog(run_dir / "log.jsonl", step if ckpt is not None else None, main)
        batches = iter(_data_loader(stage.dataset(), stage, cfg, accelerator, samples_seen))

        def agreed(*flags: bool) -> list[bool]:
            """Each flag true on any process (a stop request, a non-finite loss): all processes act alike."""
            if nproc == 1:
                return list(flags)
            return [bool(f) for f in accelerator.reduce(torch.tensor(flags, dtype=torch.float32, device=device),
                                                        "sum").tolist()]

        def checkpoint() -> None:
            nonlocal skipped_here, data_skipped
            bad = not _all_finite(model) or (ema is not None and not _all_finite(ema.model))
            if agreed(bad)[0] if fsdp else bad:  # FSDP: each process sees its shards only
                raise _diverged(run_dir, step, "a weight is non-finite", lr_at(max(step - 1, 0), cfg))
            rng = rng_states(accelerator)  # every process's (a collective)
            if nproc > 1:  # collectives: every process checkpoints
                if not fsdp:  # (FSDP: each process holds other shards by design)
                    _check_in_sync(accelerator, model, step)
                skipped_here = int(accelerator.reduce(torch.tensor([skipped_here], device=device), "sum").item())
            data_skipped, skipped_here = data_skipped + skipped_here, 0
            full = _full_state_dicts(model, ema, optimizer) if fsdp else None  # gathered to the main process
            if main:
                state = {"step": step, "elapsed_s": elapsed, "samples_seen": samples_seen, "num_processes": nproc,
                         "data_skipped": data_skipped, "stage": stage.name, "config": cfg.to_dict()}
                save_checkpoint(run_dir, model, ema, optimizer, state, rng, full)

        def side_target() -> nn.Module | None:
            """What sampling, evaluation and the export read: the EMA weights (else the model's); under FSDP gathered
            into `template` on the main process (a collective: every process calls it; None on the others)."""
            target = ema.model if ema is not None else model
            if not fsdp:
                return target
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(target, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if main:
                template.load_state_dict(full)
            return template

        def side_task(fn, target, *args):
            """sample/evaluate the EMA weights (fp32, as exported) without touching the training RNG streams."""
            target.eval()
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                out = fn(target, frozen, *args)
            model.train()
            return out

        # 3. the loop
        model.train()
        tty = sys.stderr.isatty()
        bar = tqdm(total=cfg.max_steps, initial=step, desc=stage.name, disable=not main,
                   mininterval=0.5 if tty else 30, dynamic_ncols=True)
        sums: dict[str, float] = {}  # per log window; each key averaged over the steps that logged it
        counts: dict[str, int] = {}  # (a GAN's discriminator logs only on the steps it trains)
        n_sum, t_last, t_start = 0, time.monotonic(), time.monotonic() - elapsed
        # not find_checkpoint(): that reads the disk, where the main process may still be writing, and every process
        # must take the same decision (a checkpoint is a collective)
        last_ckpt, checkpointed = step, ckpt is not None
        with _GracefulStop() as stop:
            while step < cfg.max_steps:
                interrupted, out_of_time = agreed(
                    stop.requested, cfg.max_minutes is not None and elapsed >= 60 * cfg.max_minutes)
                if interrupted:
                    stopped = "interrupted"
                    break
                if out_of_time:
                    stopped = "max_minutes"
                    break
                lr = lr_at(step, cfg)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                stage.step = step  # for stages that act on a schedule (a discriminator updated every k steps)
                step_keys: set[str] = set()
                for _ in range(cfg.grad_accum_steps):
                    try:
                        batch = _to_device(next(batches), device)
                        skipped_here += count_skipped(batch)
                    except StopIteration:
                        raise DataError(f"the training data ended at step {step}: a streaming dataset must be "
                                        "endless (webdataset: .repeat() or resampled shards)") from None
                    with accelerator.autocast():
                        loss, logs = stage.compute_loss(wrapped, frozen, batch)
                    finite = bool(torch.isfinite(loss.detach()).all())
                    if nproc == 1 and not finite:  # several processes: after backward, agreed (below)
                        raise _diverged(run_dir, step + 1, f"the loss is {loss.item()}", lr)
                    accelerator.backward(loss / cfg.grad_accum_steps)
                    if nproc > 1 and agreed(not finite)[0]:
                        raise _diverged(run_dir, step + 1, "the loss is non-finite on a process", lr)
                    for k, v in {"loss": loss.item(), **logs}.items():
                        sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum_steps
                        step_keys.add(k)
                if cfg.grad_clip is not None:
                    # per module when the stage names its optimiser groups (a GAN's G and D), else all together
                    for name in per_module or [None]:
                        params = (model if name is None else model[name]).parameters()
                        grad_norm = float(accelerator.clip_grad_norm_(params, cfg.grad_clip))
                        if not math.isfinite(grad_norm):
                            raise _diverged(run_dir, step + 1, f"the gradient norm is {grad_norm}", lr)
                        key = "grad_norm" if name is None else f"grad_norm_{name}"
                        sums[key] = sums.get(key, 0.0) + grad_norm
                        step_keys.add(key)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples_seen += samples_per_step
                n_sum += 1
                for k in step_keys:
                    counts[k] = counts.get(k, 0) + 1
                if ema is not None:
                    ema.update(model, step)
                elapsed = time.monotonic() - t_start

                # 4. bookkeeping
                if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.max_steps):
                    now = time.monotonic()
                    row = {"step": step, "lr": lr, **{k: v / counts[k] for k, v in sums.items()},
                           "it_s": n_sum / max(now - t_last, 1e-9), "elapsed_s": round(elapsed, 2)}
                    log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}", refresh=False)
                    sums, counts, n_sum, t_last = {}, {}, 0, now
                bar.update(1)
                if cfg.sample_every and step % cfg.sample_every == 0 and (target := side_target()) is not None and main:
                    grid = side_task(stage.sample, target, np.random.default_rng(cfg.seed + 1))
                    if grid is not None:
                        write_png_atomic(run_dir / "samples" / f"step_{step:06d}.png", grid)
                if (cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps
                        and (target := side_target()) is not None and main):
                    metrics = side_task(stage.evaluate, target)
                    if metrics:
                        log.write({"step": step, **metrics})
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    checkpoint()
                    last_ckpt, checkpointed = step, True
        bar.close()
        del batches  # DataLoader workers, if any, stop here
        if step > last_ckpt or not checkpointed:
            checkpoint()
        run = {"num_processes": nproc, "distributed": str(accelerator.distributed_type.value),
               "global_batch_size": samples_per_step, "samples_seen": samples_seen, "data_skipped": data_skipped}
        if nproc > 1 and not fsdp:
            run["processes_in_sync"] = True  # checked at every checkpoint, the last one included (else: raised)
        if stopped == "interrupted":
            summary = {"stage": stage.name, "step": step, "elapsed_s": round(elapsed, 2), "stopped": stopped,
                       "run_dir": str(run_dir), **run}
            log.write({"final": False, **summary})
            accelerator.wait_for_everyone()
            return summary
        export_model = side_target()
        metrics = side_task(stage.evaluate, export_model) if main else {}
    else:
        log = _JsonLog(run_dir / "log.jsonl", None, main)
        export_model, metrics = model, stage.evaluate(model, frozen) if main else {}
        run = {"num_processes": nproc, "distributed": str(accelerator.distributed_type.value),
               "global_batch_size": 0, "samples_seen": 0, "data_skipped": 0}

    # 5. export the deployable component (EMA weights): once, by the main process
    summary = {"stage": stage.name, "step": step, "elapsed_s": round(elapsed, 2), "stopped": stopped,
               "export_dir": str(cfg.export_dir), "run_dir": str(run_dir), **run, **metrics}
    if main:
        if not _all_finite(export_model):  # never export non-finite weights
            raise _diverged(run_dir, step, "a weight to export is non-finite", lr_at(max(step - 1, 0), cfg))
        export_model.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            stage.export(export_model, frozen, Path(cfg.export_dir))
        log.write({"final": True, **summary})
        write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return summary


def make_grid(images: np.ndarray, cols: int = 8, pad: int = 2) -> np.ndarray:
    """[N, H, W, 3] uint8 -> one uint8 grid image (white padding)."""
    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    cols = min(cols, n)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = im
    return out


__all__ = ["DivergedError", "EMA", "OutOfSyncError", "RunDirBusyError", "Stage", "call_method", "default_export_dir",
           "find_checkpoint", "load_checkpoint", "lr_at", "make_grid", "optimizer_state_keyed", "rng_states",
           "save_checkpoint", "train", "weight_fingerprint"]
