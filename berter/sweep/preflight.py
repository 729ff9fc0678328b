"""Checks a sweep makes before Ray starts: the model loads and fits every strategy, the data
warnings are collected, and the slow checks run alongside Ray's start-up."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berter.config import Config
from berter.errors import ConfigError, first_line

if TYPE_CHECKING:  # berter.variants imports the exit methods (torch): not before Ray starts
    pass


def _check_model(model: str) -> int:
    """Load the backbone's config and tokenizer (cheap) so a bad --model fails before Ray, and
    check the installed packages against berter's requirements (:func:`check_requirements`)
    so an incompatible transformers is one line here, not an ImportError in every trial."""
    from transformers import AutoConfig

    from berter.config import DEFAULT_MODEL
    from berter.data.encode import get_tokenizer, packaged_model_path
    from berter.model.families import check_model_type

    check_requirements()
    path = packaged_model_path() if model == DEFAULT_MODEL else model
    looks_local = model.startswith((".", "/", "~")) or os.sep in model.strip("/")
    if model != DEFAULT_MODEL and looks_local and not Path(model).expanduser().is_dir():
        raise ConfigError(f"model directory {model} does not exist")
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ConfigError(f"cannot load model {model!r}: {first_line(exc)}") from None
    check_model_type(cfg, model)
    get_tokenizer(model)
    return int(cfg.num_hidden_layers)


def check_requirements(dist: str = "berter") -> None:
    """Refuse, in one line, installed packages outside berter's own requirements (its
    metadata's Requires-Dist, extras aside), e.g. a transformers 4.x that lacks what the model
    code imports, or a Ray minor whose Optuna searcher berter does not know.

    Reading the metadata takes milliseconds. Importing the model code to find out instead cost
    the driver 4.5 s of CPU on cpu2 (transformers.modeling_utils pulls in torch._dynamo and
    transformers' kernel integrations) while Ray was starting beside it: the driver never
    needs that code, only the trials do. Without installed metadata (a source tree on
    PYTHONPATH) there is nothing to compare and nothing is refused."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    try:
        wanted = requires(dist) or []
    except PackageNotFoundError:
        return
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement, or another platform's
        try:
            have = version(req.name)
        except PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            found = f"{req.name} {have} is installed" if have else f"{req.name} is not installed"
            raise ConfigError(
                f"the installed packages cannot run the model: {found}; {dist} needs {req}"
                f" (pip install '{req}')"
            )


def main_epochs(cfg: Config, num_layers: int) -> int:
    """Epochs of a config outside a Sequential Layer Focus warm-up (the ASHA time axis).

    The strategy class decides (two_stage doubles the epochs; SLF's leading epoch is not
    counted) and checks that the backbone, less ``drop_top``, is deep enough. No model is
    built: the driver never imports transformers' modelling code (seconds before Ray's first
    trial can start), only the trials do.
    """
    from berter.config import layers_after_drop
    from berter.strategies import STRATEGIES

    strategy = STRATEGIES[cfg.strategy]
    strategy.check_layers(layers_after_drop(cfg, num_layers))
    return strategy.epochs_for(cfg)


def concurrently(work: Callable[[], Any], alongside: Callable[[], None] | None) -> Any:
    """``work()`` in a helper thread while ``alongside()`` runs in this one (Ray's start
    installs a signal handler, so it wants the main thread); returns ``work``'s value and
    raises its exception here, after both have finished."""
    if alongside is None:
        return work()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="berter-check") as pool:
        checked = pool.submit(work)
        alongside()
        return checked.result()


@contextlib.contextmanager
def data_warnings() -> Iterator[list[str]]:
    """Hold back the data loader's warnings (skipped rows) so that the first line of output
    is the data source; they are printed as notes right after it."""
    held: list[str] = []

    class Hold(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(record.getMessage())

    log = logging.getLogger("berter.data")
    handler, propagate = Hold(logging.WARNING), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield held
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
