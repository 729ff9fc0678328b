"""The basic types every layer shares: a task, its table, one example, one batch, metric columns.

Nothing here reads files or loads models, so any module may import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a Batch holds tensors; the task table must not cost a torch import
    import torch

from berter.errors import ConfigError


# ----------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class Task:
    """One data set: what it predicts and how its files are laid out."""

    name: str
    kind: str  # single_cls | pair_cls | pair_reg
    num_labels: int  # classes; 1 for regression
    metric: str  # accuracy | pearson
    files: dict[str, str] = field(hash=False)  # split -> path inside the data dir
    text_cols: tuple[str, ...]  # one column, or two for pair tasks
    label_col: str
    id_col: str | None = None  # None: the 1-based data row is the id
    label_range: tuple[float, float] = (0.0, 1.0)  # inclusive
    label_map: dict[str, int] | None = field(default=None, hash=False)  # text label -> int
    quoted: bool = True  # CS224N files use CSV quoting; GLUE files do not
    skip_unlabelled: bool = False  # drop rows with an empty label instead of failing
    label_last: bool = False  # rows with extra tab-separated fields keep their last field as label

    @property
    def is_pair(self) -> bool:
        return self.kind != "single_cls"

    @property
    def is_regression(self) -> bool:
        return self.kind == "pair_reg"


def _glue(folder: str) -> dict[str, str]:
    return {"train": f"{folder}/train.tsv", "dev": f"{folder}/dev.tsv"}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("sst", "single_cls", 5, "accuracy",
             {"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv"},
             ("sentence",), "sentiment", id_col="id", label_range=(0, 4)),
        Task("para", "pair_cls", 2, "accuracy",
             {"train": "quora-train.csv", "dev": "quora-dev.csv"},
             ("sentence1", "sentence2"), "is_duplicate", id_col="id", skip_unlabelled=True),
        Task("sts", "pair_reg", 1, "pearson",
             {"train": "sts-train.csv", "dev": "sts-dev.csv"},
             ("sentence1", "sentence2"), "similarity", id_col="id", label_range=(0, 5)),
        Task("sst2", "single_cls", 2, "accuracy", _glue("SST-2"),
             ("sentence",), "label", quoted=False),
        Task("qqp", "pair_cls", 2, "accuracy", _glue("QQP"),
             ("question1", "question2"), "is_duplicate", id_col="id", quoted=False),
        Task("mrpc", "pair_cls", 2, "accuracy", _glue("MRPC"),
             ("#1 String", "#2 String"), "Quality", quoted=False),
        Task("stsb", "pair_reg", 1, "pearson", _glue("STS-B"),
             ("sentence1", "sentence2"), "score", id_col="index", label_range=(0, 5),
             quoted=False, label_last=True),
        Task("rte", "pair_cls", 2, "accuracy", _glue("RTE"),
             ("sentence1", "sentence2"), "label", id_col="index",
             label_map={"not_entailment": 0, "entailment": 1}, quoted=False),
    )
}  # fmt: skip


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]



# ----------------------------------------------------------------------------- reading
@dataclass
class Example:
    id: str
    text_a: str
    text_b: str | None
    label: float  # int-valued for classification



# ----------------------------------------------------------------------------- batching
TENSOR_FIELDS = (
    "labels", "index", "input_ids", "attention_mask", "token_type_ids",
    "input_ids_b", "attention_mask_b",
)  # fmt: skip


@dataclass(eq=False)  # compared by identity: tensors have no single truth value
class Batch:
    """One padded batch of one task. In the separate layout sentence B has its own tensors."""

    task: str
    labels: torch.Tensor  # int64 for multi-class, float32 for binary and regression
    index: torch.Tensor  # int64 positions of the examples in their split list
    input_ids: torch.Tensor | None = None  # [B, T]: the packed pair, the single sentence, or A
    attention_mask: torch.Tensor | None = None
    token_type_ids: torch.Tensor | None = None  # packed pairs only; None means all zeros
    input_ids_b: torch.Tensor | None = None  # separate layout: sentence B, [B, T_b]
    attention_mask_b: torch.Tensor | None = None
    _num_tokens: int | None = field(default=None, repr=False, compare=False)

    def _map(self, fn) -> Batch:
        moved = {k: fn(v) for k in TENSOR_FIELDS if (v := getattr(self, k)) is not None}
        return dataclasses.replace(self, **moved)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Page-locked copies for async host-to-GPU copies; a no-op without CUDA."""
        import torch

        if not torch.cuda.is_available():
            return self
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens, for throughput; counted on the CPU when batched."""
        if self._num_tokens is None:
            masks = [m for m in (self.attention_mask, self.attention_mask_b) if m is not None]
            self._num_tokens = int(sum(m.sum().item() for m in masks))
        return self._num_tokens



# column names of the three CS224N metrics in results; other tasks use "<task>_<metric>"
METRIC_COLUMN = {"sst": "sst_acc", "para": "para_acc", "sts": "sts_corr"}


def metric_column(task: Task) -> str:
    return METRIC_COLUMN.get(
        task.name, f"{task.name}_{'corr' if task.metric == 'pearson' else 'acc'}"
    )
