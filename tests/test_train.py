import io
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from faults import FaultInjector
from tiny import SHARED_DATA, tiny_backbone, tiny_config

from berter.train.cli import main
from berter.train.run import TrainingRun, train_and_evaluate


def weights(run: TrainingRun) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def test_same_seed_gives_identical_training():
    a = TrainingRun(tiny_config(strategy="joint"), backbone=tiny_backbone())
    b = TrainingRun(tiny_config(strategy="joint"), backbone=tiny_backbone())
    ra, rb = a.fit(), b.fit()
    assert ra.train_loss == rb.train_loss
    assert ra.metrics["layer_scores"] == rb.metrics["layer_scores"]
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_another_seed_changes_the_batch_order():
    a = TrainingRun(tiny_config(seed=0), backbone=tiny_backbone())
    b = TrainingRun(tiny_config(seed=1), backbone=tiny_backbone())
    ids = lambda run: [tuple(x.index.tolist()) for x in run.epoch_batches(0)]  # noqa: E731
    assert ids(a) != ids(b)


@pytest.mark.parametrize("order", ["proportional", "round_robin"])
def test_batches_interleave_tasks_and_cover_the_training_data(order):
    run = TrainingRun(tiny_config(task_order=order), backbone=tiny_backbone())
    batches = run.epoch_batches(0)
    if order == "round_robin":
        assert [b.task for b in batches[:3]] == ["sst", "para", "sts"]
    else:  # spread: no task has all its batches in one run
        runs = [(task, len(list(g))) for task, g in itertools.groupby(b.task for b in batches)]
        for name in ("sst", "para", "sts"):
            longest = max(n for task, n in runs if task == name)
            assert longest < sum(b.task == name for b in batches)
    for name in ("sst", "para", "sts"):
        seen = sorted(i for b in batches if b.task == name for i in b.index.tolist())
        assert seen == list(range(len(run.encoded[name]["train"].labels)))


@pytest.mark.parametrize("concat", ["before_embed", "after_embed"])
def test_pair_swap_trains_each_pair_once_per_epoch_in_a_fresh_random_order(concat):
    run = TrainingRun(tiny_config(pair_swap=True, concat=concat), backbone=tiny_backbone())
    enc, other = run.encoded["para"]["train"], run.encoded["para"]["train_swapped"]
    assert "train_swapped" not in run.encoded["sst"]  # single sentences have no order
    orders = []
    for epoch in (0, 1):
        seen = {}
        for b in run.epoch_batches(epoch):
            if b.task != "para":
                continue
            for pos, ids, mask in zip(b.index.tolist(), b.input_ids, b.attention_mask, strict=True):
                seen[pos] = ids[mask.bool()].tolist()
        assert sorted(seen) == list(range(len(enc)))  # every pair exactly once
        as_given = [seen[i] == enc.ids_a[i] for i in range(len(enc))]
        assert all(seen[i] in (enc.ids_a[i], other.ids_a[i]) for i in seen)
        assert 0 < sum(as_given) < len(enc)  # both orders appear
        orders.append(as_given)
    assert orders[0] != orders[1]  # a new draw each epoch
    if concat == "before_embed":  # the swap is [CLS] B [SEP] A [SEP], label unchanged
        sep = run.tokenizer.sep_token_id
        a, b = enc.ids_a[0], other.ids_a[0]
        cut = a.index(sep)
        assert b == [a[0], *a[cut + 1 : -1], sep, *a[1:cut], sep]
    else:
        assert other.ids_a == enc.ids_b and other.ids_b == enc.ids_a
    assert other.labels == enc.labels


def test_pair_swap_off_trains_the_pairs_as_given():
    run = TrainingRun(tiny_config(), backbone=tiny_backbone())
    enc = run.encoded["para"]["train"]
    assert "train_swapped" not in run.encoded["para"]
    for b in run.epoch_batches(1):
        if b.task == "para":
            for pos, ids, mask in zip(b.index.tolist(), b.input_ids, b.attention_mask, strict=True):
                assert ids[mask.bool()].tolist() == enc.ids_a[pos]


def test_final_strategy_leaves_intermediate_heads_untouched():
    run = TrainingRun(tiny_config(strategy="final"), backbone=tiny_backbone())
    before = weights(run)
    run.fit()
    after = weights(run)
    assert torch.equal(before["heads.sst.0.out.weight"], after["heads.sst.0.out.weight"])
    assert not torch.equal(before["heads.sst.2.out.weight"], after["heads.sst.2.out.weight"])
    assert not torch.equal(
        before["bert.encoder.layer.0.attention.self.query.weight"],
        after["bert.encoder.layer.0.attention.self.query.weight"],
    )


def test_evaluation_scores_every_exit_in_example_order():
    run = TrainingRun(tiny_config(strategy="joint"), backbone=tiny_backbone())
    ev = run.evaluate("dev")
    sst = ev.tasks["sst"]
    assert len(sst.metrics) == len(sst.logits) == 3
    gold = [e.label for e in run.data.splits["sst"].dev]
    assert sst.labels.tolist() == gold
    assert sst.logits[0].shape == (len(gold), 5)
    assert len(ev.layer_scores) == 3 and ev.dev_score == ev.layer_scores[-1]


def test_resuming_from_a_state_dict_matches_an_uninterrupted_run():
    cfg = tiny_config(epochs=2, strategy="joint")
    straight = TrainingRun(cfg, backbone=tiny_backbone())
    straight.fit()
    first = TrainingRun(cfg, backbone=tiny_backbone())
    first.train_epoch()
    state = first.state_dict()
    resumed = TrainingRun(cfg, backbone=tiny_backbone(seed=5))
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    resumed.train_epoch()
    ws, wr = weights(straight), weights(resumed)
    assert all(torch.allclose(ws[k], wr[k], atol=1e-6) for k in ws)


def test_a_non_finite_loss_is_reported_as_diverged_and_stops_training():
    run = TrainingRun(
        tiny_config(epochs=3), backbone=tiny_backbone(), callbacks=[FaultInjector("nan@1")]
    )
    report = run.fit()
    assert report.metrics["diverged"] and run.epoch == 1


# Every way Python code reads a tensor's value on the host: on CUDA each one waits for the
# GPU to finish the queued work, so one per step stalls the pipeline every step.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"smart": "all", "smart_steps": 2},
        {"strategy": "alternating", "exit_method": "lte"},
        {"strategy": "joint", "exit_method": "qexit", "exit_distill": 0.5},
        {"strategy": "smart_alt", "exit_method": "berter", "slf": "on"},
        {"cos_loss": "on"},
        {"concat": "before_embed", "pair_swap": True, "ema_decay": 0.9},
    ],
    ids=[
        "final",
        "smart",
        "alternating-lte",
        "joint-qexit-distill",
        "slf-smart_alt",
        "siamese",
        "packed-swap-ema",
    ],
)
def test_training_reads_tensors_on_the_host_a_fixed_number_of_times_per_epoch(
    overrides, monkeypatch
):
    """No host read inside the step loop: three times the steps, the same number of reads."""

    def reads(max_train: int) -> int:
        run = TrainingRun(tiny_config(max_train=max_train, **overrides), backbone=tiny_backbone())
        return host_reads(run.train_epoch, monkeypatch)

    assert reads(16) == reads(48)


def test_evaluation_reads_tensors_on_the_host_a_fixed_number_of_times_per_task(monkeypatch):
    """Outputs stay on the device until a task's last batch: more batches, the same reads."""
    monkeypatch.setattr("berter.train.evaluate.EVAL_BATCH", 4)

    def reads(max_dev: int) -> int:
        run = TrainingRun(tiny_config(max_dev=max_dev), backbone=tiny_backbone())
        return host_reads(run.evaluate, monkeypatch)

    assert reads(8) == reads(16)


def host_reads(work, monkeypatch) -> int:
    """How many times ``work()`` reads a tensor's value on the host."""
    count = 0

    def counted(name: str):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            nonlocal count
            # AveragedModel's step counter is a CPU tensor on any device (its device=None):
            # reading it never waits for the GPU
            count += not sys._getframe(1).f_code.co_filename.endswith("swa_utils.py")
            return real(self, *args, **kwargs)

        return read

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, counted(name))
        work()
    return count


def test_every_optimizer_trains(subtests=None):
    for opt in ("adamw", "rmsprop", "sgd"):
        result = train_and_evaluate(tiny_config(optimizer=opt), backbone=tiny_backbone())
        assert result["epochs_done"] == 1 and result["train_loss"] > 0


def test_cli_rejects_a_bad_value_with_one_line_and_exit_2(capsys):
    assert main(["--dropout", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dropout" in err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--amp", "maybe"], "--amp: 'maybe' is not one of true, false"),
        (["--lr", "fast"], "--lr: 'fast' is not a number"),
        (["--epochs", "1.5"], "--epochs: '1.5' is not an integer"),
        (["--warp", "9"], "unrecognized arguments: --warp"),
    ],
)
def test_cli_rejects_a_malformed_option_with_one_line_before_training(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err
    assert err.startswith("error: ") and message in err


def test_cli_reports_a_missing_data_dir_with_exit_2(tmp_path, capsys):
    assert main(["--data-dir", str(tmp_path / "nope")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared CS224N data not present")
def test_packaged_backbone_learns_on_a_slice_of_the_real_data():
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(
            [
                "--data-dir",
                str(SHARED_DATA),
                "--max-train",
                "200",
                "--max-dev",
                "100",
                "--epochs",
                "1",
                "--max-len",
                "64",
                "--cos-loss",
                "on",
                "--strategy",
                "joint",
            ]
        )
    assert code == 0
    result = json.loads(out.getvalue())
    assert result["data_source"] == str(SHARED_DATA.resolve())
    # siamese STS reads the pretrained sentence encoder's cosine: a real backbone on
    # correctly aligned data correlates strongly from the start
    assert result["sts_corr"] > 0.5
    assert result["para_acc"] > 0.6


FAULTS_SCRIPT = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from berter.train.run import keep_freed_memory
    assert keep_freed_memory()
def step():
    t = torch.empty(16 * 2**20).fill_(1.0)  # 64 MB, freed again as a training step does
    del t
for _ in range(4):  # the heap grows to its steady size
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_training_memory_is_reused_without_page_faults():
    """A large tensor freed and allocated again is not faulted in anew (fresh processes: the
    setting is process-wide)."""

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", FAULTS_SCRIPT, mode],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )  # fmt: skip
        return int(out.stdout.split()[-1])

    pages = 4 * 64 * 2**20 // resource.getpagesize()
    assert faults("default") > pages // 2  # glibc's default: every reallocation faults
    assert faults("keep") < pages // 100


def test_every_training_run_keeps_freed_memory(monkeypatch):
    import berter.train.run as train

    calls = []
    monkeypatch.setattr(train, "keep_freed_memory", lambda: calls.append(True) or True)
    TrainingRun(tiny_config(), backbone=tiny_backbone())
    assert calls == [True]
