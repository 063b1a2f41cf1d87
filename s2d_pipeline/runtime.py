"""Process-level setup shared by every stage: seeds, threads, offline mode, device, and the library
output that says nothing about the run."""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Callable
from typing import TypeVar

from s2d_pipeline.config import Config

T = TypeVar("T")

# s2d never downloads (model and data references must already be on disk) and sends no usage
# telemetry: offline, each attempt only fills the logs with connection errors. A user's own
# setting of any of these wins.
QUIET_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_offline_env() -> None:
    for key, value in QUIET_OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def setup(cfg: Config, seed_offset: int = 0) -> None:
    quiet_offline_env()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(cfg)
    os.environ["MLFLOW_EXPERIMENT_NAME"] = cfg.tracking.experiment
    import numpy as np
    import torch

    quiet_libraries()

    if cfg.runtime.torch_threads:
        torch.set_num_threads(cfg.runtime.torch_threads)
    seed = cfg.seed + seed_offset
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def quiet_libraries() -> None:
    """Turn off what libraries print that says nothing about this run. Each switch is the library's
    own API, or a filter on one exact third-party message, with the reason next to it."""
    # "Writing model shards" / "Loading weights" bars on every save and load of a tiny model.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()  # "Map" bars of trainers preparing a few hundred rows
    except ImportError:  # pragma: no cover - TRL always brings it
        pass
    # TRL 1.16's own generation helpers (`unwrap_model_for_generation`, `disable_gradient_checkpointing`)
    # read `model.is_gradient_checkpointing`, which transformers 5 deprecates: one FutureWarning per
    # generation step that s2d cannot act on. Only that message is ignored.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # evaluate registers the student from a local directory; MLflow's transformers flavour then looks
    # for a hub model card and license for that path and warns twice that it is not a hub repo id.
    mlflow_transformers = logging.getLogger("mlflow.transformers")
    if not any(isinstance(f, _DropMessages) for f in mlflow_transformers.filters):
        mlflow_transformers.addFilter(
            _DropMessages(
                "The model card could not be retrieved from the hub",
                "Unable to find license information for this model",
            )
        )

    # TRL writes a model card beside every saved model from a template without a metadata block, and
    # huggingface_hub warns about that block on each save: nothing a user of s2d can change.
    repocard = logging.getLogger("huggingface_hub.repocard")
    if not any(isinstance(f, _DropMessages) for f in repocard.filters):
        repocard.addFilter(_DropMessages("Repo card metadata block was not found"))


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes` (one logger, exact texts)."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def device(cfg: Config) -> str:
    import torch

    if cfg.runtime.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.runtime.device


def world_size() -> int:
    """How many processes run this stage: more than 1 under `accelerate launch` (cli.run_distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_on_main_process(fn: Callable[[], T]) -> T | None:
    """`fn()` once per stage however many processes run it: in the main process, which returns its
    result; the others return None. Only for work whose result the main process alone writes (the
    other processes write nothing), called where the stage's collective work is over.

    The others first give back the GPU memory their caching allocator holds and wait until all have,
    so the main process can place a model across every GPU (models.load_model). They do not wait for
    `fn`: a collective wait is cut off by the process group's timeout (transformers' `ddp_timeout`,
    30 minutes), which scoring a large teacher can outlast; they end and free their GPUs instead."""
    if world_size() == 1:
        return fn()
    import gc

    import torch
    from accelerate import PartialState

    # The training stage's own state when its trainer ran first; else joined here (gloo without CUDA).
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    state.wait_for_everyone()
    return fn() if state.is_main_process else None


def tracking_uri(cfg: Config) -> str:
    """The project's one MLflow store: relative sqlite paths resolve against the project root, so
    DVC stages, Prefect workers and TRL callbacks in any working directory share it. A worker set
    up by infra/ sets S2D_TRACKING_URI to the shared server, which takes precedence over params."""
    uri = os.environ.get("S2D_TRACKING_URI") or cfg.tracking.uri  # a worker's shared server wins
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(cfg.path(uri[len(prefix) :]))
    return uri


def health_problem(base_url: str, timeout_s: float = 5.0) -> str | None:
    """None when `<base_url>/health` answers 200, else what went wrong (for a service preflight)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
