"""Where a run's metrics go besides ``metrics.jsonl``: TensorBoard, Weights & Biases, MLflow
(``run.loggers``; the driver only — actors never log).

Every logger receives each row the run directory appends to ``metrics.jsonl`` (the iteration rows
and the held-out evaluation rows, every numeric value as a scalar at step ``iteration``) and each
image grid it writes (``grids/iter_N.png`` at step ``N``). ``jsonl`` is ``metrics.jsonl`` itself:
always written, because resume and the summary read it.

Nothing is sent anywhere by default: TensorBoard writes event files into ``RUN/tensorboard/``;
W&B runs offline into ``RUN/wandb/`` unless an API key is configured (``WANDB_API_KEY`` or a
``wandb login`` entry in ``~/.netrc``), ``WANDB_MODE`` or ``run.wandb_mode`` say otherwise; MLflow
logs into ``RUN/mlruns/`` unless ``MLFLOW_TRACKING_URI`` names a server.
"""

from __future__ import annotations

import importlib.util
import io
import netrc
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from mixgrpo_ray.config import Config

#: logger name -> (the module it needs, the pip extra that installs it)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


class LoggerError(ValueError):
    """A configured logger that cannot run here, as one line (exit code 2)."""


def check_loggers(names: Sequence[str]) -> None:
    """Raise :class:`LoggerError` for the first configured logger whose package is missing
    (checked before the run directory or any actor exists)."""
    for name in names:
        if name in PACKAGES:
            module, extra = PACKAGES[name]
            if importlib.util.find_spec(module) is None:
                raise LoggerError(f"run.loggers includes {name} but the {module!r} package is not installed; "
                                  f"pip install 'mixgrpo-ray[{extra}]' (or {module}), or remove it from run.loggers")


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a metrics row (not ``iteration``, flags or lists)."""
    return {k: float(v) for k, v in row.items()
            if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def grid_step(name: str) -> Optional[int]:
    """``iter_000050.png`` -> 50."""
    m = re.match(r"iter_(\d+)", name)
    return int(m.group(1)) if m else None


def _pil(png: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(png)).convert("RGB")


class TensorBoardLogger:
    def __init__(self, cfg: Config, run: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run / "tensorboard"))

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_image(self, step: int, tag: str, png: bytes) -> None:
        import numpy as np

        self.writer.add_image(tag, np.asarray(_pil(png)), global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_api_key_configured() -> bool:
    """``WANDB_API_KEY`` is set, or ``~/.netrc`` (``NETRC``) has an ``api.wandb.ai`` entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(configured: str) -> str:
    """``run.wandb_mode``; ``auto``: ``WANDB_MODE`` if set, else online only with an API key."""
    if configured != "auto":
        return configured
    return os.environ.get("WANDB_MODE") or ("online" if wandb_api_key_configured() else "offline")


class WandbLogger:
    def __init__(self, cfg: Config, run: Path) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=cfg.run.project, name=run.name, dir=str(run), config=cfg.to_dict(),
                              mode=wandb_mode(cfg.run.wandb_mode), reinit="create_new")

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def log_image(self, step: int, tag: str, png: bytes) -> None:
        self.run.log({tag: self.wandb.Image(_pil(png))}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    def __init__(self, cfg: Config, run: Path) -> None:
        import mlflow

        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store in the run directory (MLflow 3 asks for an explicit opt-in)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run / "mlruns").resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(cfg.run.project)
        self.active = mlflow.start_run(run_name=run.name)
        flat = {f"{s}.{k}": v for s, sec in cfg.to_dict().items() if isinstance(sec, dict) for k, v in sec.items()}
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})

    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def log_image(self, step: int, tag: str, png: bytes) -> None:
        self.mlflow.log_image(_pil(png), key=tag.replace("/", "."), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


class Loggers:
    """The configured loggers as one sink (:class:`~mixgrpo_ray.train.run_dir.RunDir` forwards every
    metrics row and grid to it)."""

    def __init__(self, cfg: Config, run: Path) -> None:
        self.loggers: list = []
        try:
            for name in dict.fromkeys(cfg.run.loggers):  # in order, once each
                if name in LOGGERS:
                    self.loggers.append(LOGGERS[name](cfg, Path(run)))
        except BaseException:
            self.close()
            raise

    def log_row(self, row: Mapping[str, Any]) -> None:
        values = scalars(row)
        if values and "iteration" in row:
            for logger in self.loggers:
                logger.log_metrics(int(row["iteration"]), values)

    def log_grid(self, name: str, png: bytes) -> None:
        step = grid_step(name)
        for logger in self.loggers:
            logger.log_image(step if step is not None else 0, "grids/held_out", png)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []
