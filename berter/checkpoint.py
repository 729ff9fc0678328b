"""A trained model as a self-contained directory: save it, load it, resume a run from it.

Checkpoint format (a directory), written by ``save_model`` and read by ``load_model``:
    config.json      Config.to_dict()
    model.pt         MultiExitBert state dict (TrainingRun.state_dict()["model"]),
                     loadable with torch.load(weights_only=True)
    backbone/        the backbone's transformers config: the architecture and its family
                     (``model_type``: bert, roberta, albert, electra, distilbert, deberta-v2);
                     the weights are in model.pt
    tokenizer/       the tokenizer, so the directory is self-contained
    exits.json       {"exit_method", "thresholds": {task: value, [value per exit layer] or null},
                      "num_layers", "tolerance"}
The directory may be an s3:// / gs:// URI (a sweep's checkpoint on an object store): it is
copied to a temporary directory and read from there.
A sweep trial's checkpoint (berter.trainable) is the same directory with ``state.pt``, the whole
``TrainingRun.state_dict()`` for resuming, in place of ``model.pt``; ``load_model`` reads the
weights from its "model" entry, so ``berter infer`` takes a trial checkpoint as it is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from berter.config import RETIRED_FIELDS, Config
from berter.errors import ConfigError, DataError, first_line
from berter.exits.base import (
    Param,
    Thresholds,
)
from berter.exits.calibration import as_param, calibrate, layer_values
from berter.exits.rules import build_exit_method
from berter.model.multi_exit import MultiExitBert, new_backbone
from berter.objstore import is_uri, local_copy
from berter.tasks import get_task

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
STATE_FILE = "state.pt"  # a sweep trial's TrainingRun state (berter.trainable.CHECKPOINT_FILE)
EXITS_FILE = "exits.json"
BACKBONE_DIR = "backbone"
TOKENIZER_DIR = "tokenizer"




# ----------------------------------------------------------------------------- checkpoints
def save_model(
    run: Any, directory: str | Path, thresholds: Thresholds | None = None, weights: bool = True
) -> Path:
    """Write a self-contained inference checkpoint of a TrainingRun (see the module doc).

    ``thresholds``: per-task operating params; by default chosen on the calibration slice.
    ``weights=False`` leaves out model.pt, for a directory whose state.pt already has them.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if thresholds is None:
        thresholds = calibrate(run)
    (path / CONFIG_FILE).write_text(json.dumps(run.cfg.to_dict(), indent=2))
    if weights:
        torch.save(run.model.state_dict(), path / WEIGHTS_FILE)
    run.model.bert.config.save_pretrained(path / BACKBONE_DIR)
    if run.tokenizer is not None:
        run.tokenizer.save_pretrained(path / TOKENIZER_DIR)
    exits = {
        "exit_method": run.cfg.exit_method,
        "thresholds": {name: _stored(v) for name, v in thresholds.items()},
        "num_layers": run.model.num_layers,
        "tolerance": run.cfg.exit_tolerance,
    }
    (path / EXITS_FILE).write_text(json.dumps(exits, indent=2))
    return path


def _stored(param: Param) -> float | list[float | None] | None:
    """An operating param as JSON: a number, a list per exit layer (null: never), or null."""
    if isinstance(param, tuple):
        return layer_values(param, None)
    return None if param is None else float(param)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path.parent}: not a checkpoint (missing {path.name})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def load_model(
    directory: str | Path, device: torch.device | str = "cpu"
) -> tuple[Config, MultiExitBert, Thresholds]:
    """Rebuild the model of a checkpoint directory, local or an s3:// / gs:// URI (copied to a
    temporary directory first); returns (cfg, model in eval mode, thresholds)."""
    from transformers import AutoConfig

    if is_uri(directory):
        with local_copy(directory) as local:
            return load_model(local, device)

    path = Path(directory)
    if not path.is_dir():
        raise DataError(f"{path}: checkpoint directory does not exist")
    saved = _read_json(path / CONFIG_FILE)
    cfg = Config.from_dict({k: v for k, v in saved.items() if k not in RETIRED_FIELDS})
    exits = _read_json(path / EXITS_FILE) if (path / EXITS_FILE).exists() else {}
    tasks = [get_task(name) for name in cfg.tasks]
    try:
        backbone_config = AutoConfig.from_pretrained(path / BACKBONE_DIR)
    except (OSError, ValueError) as e:
        raise DataError(f"{path / BACKBONE_DIR}: cannot read the backbone config: {e}") from None
    try:
        backbone = new_backbone(backbone_config)  # built by its family's adapter
    except ConfigError as e:
        raise DataError(f"{path / BACKBONE_DIR}: {e}") from None
    # the saved backbone config already has drop_top applied
    build_cfg = dataclasses.replace(cfg, drop_top=0)
    module = build_exit_method(build_cfg).build_module
    model = MultiExitBert.from_config(build_cfg, tasks, backbone, exit_module=module)
    weights = path / WEIGHTS_FILE
    if not weights.is_file() and (path / STATE_FILE).is_file():
        weights = path / STATE_FILE  # a sweep trial's checkpoint
    if not weights.is_file():
        raise DataError(f"{path}: not a checkpoint (missing {WEIGHTS_FILE})")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if weights.name == STATE_FILE:
            state = state["model"]
        model.load_state_dict(state)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError) as e:
        raise DataError(f"{weights}: cannot load the weights: {first_line(e)}") from None
    try:
        thresholds = {name: as_param(exits.get("thresholds", {}).get(name)) for name in cfg.tasks}
    except (TypeError, ValueError) as e:
        raise DataError(f"{path / EXITS_FILE}: unreadable thresholds: {e}") from None
    return cfg, model.to(device).eval(), thresholds


def run_from_checkpoint(directory: str | Path, **changes: Any) -> Any:
    """A TrainingRun around a trained checkpoint: its config (with ``changes``), its data
    slices (the same seed holds out the same calibration slice) and its weights, in eval mode.
    For measuring a trained model with the training code's evaluation."""
    from berter.train.run import TrainingRun

    cfg, model, _ = load_model(directory)
    cfg = dataclasses.replace(cfg, drop_top=0, num_threads=None, **changes)
    run = TrainingRun(cfg, backbone=model.bert)
    run.model.load_state_dict(model.state_dict())
    run.model.eval()
    return run


def load_tokenizer(directory: str | Path, cfg: Config):
    """The checkpoint's own tokenizer, or the model's when the checkpoint has none."""
    from transformers import AutoTokenizer

    from berter.data.encode import get_tokenizer

    tok_dir = Path(directory) / TOKENIZER_DIR
    if tok_dir.is_dir():
        try:
            return AutoTokenizer.from_pretrained(tok_dir)
        except (OSError, ValueError) as e:
            raise DataError(f"{tok_dir}: cannot load the tokenizer: {e}") from None
    return get_tokenizer(cfg.model)



