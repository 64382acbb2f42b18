"""End-to-end latency of text-to-image configurations on this machine (`pocketdiff bench`): the talk's table,
text encoder + steps x UNet + decoder, each component timed interleaved in one process, against SD-1.5."""

from .backends import BackendError, get_backend, list_backends, register_backend
from .configs import BASELINE, DEFAULT_RUN, BenchConfig, get_config, list_configs, register_config
from .run import BenchResult, Progress, compose, run_bench

__all__ = ["BASELINE", "DEFAULT_RUN", "BackendError", "BenchConfig", "BenchResult", "Progress", "compose",
           "get_backend", "get_config", "list_backends", "list_configs", "register_backend", "register_config",
           "run_bench"]
