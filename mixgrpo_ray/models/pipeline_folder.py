"""What every diffusers pipeline folder a policy loads shares: its layout check and the scheduler
config the pipeline's own sigma grid comes from (docs/algorithm.md §2.1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def check_folder(path: str, subfolders: Sequence[str], pipeline: str, what: str) -> str:
    """``path`` as a string when it is a folder holding ``subfolders``; else one-line
    ``FileNotFoundError`` naming ``what`` (e.g. ``"SD3"``) and the ``pipeline`` layout."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what} model folder {path!r} does not exist; set model.path to a "
                                f"{pipeline} folder ({', '.join(subfolders)})")
    missing = [s for s in subfolders if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(f"{what} model folder {path!r} lacks {', '.join(s + '/' for s in missing)} "
                                f"({pipeline} layout expected)")
    return str(root)


def scheduler_config(path: str) -> dict:
    """The folder's ``scheduler/scheduler_config.json``."""
    return json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
