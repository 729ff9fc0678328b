"""GPU path: training examples/s and GPU utilisation, fp32 against autocast (and compile).

For two backbones, the packaged all-MiniLM-L6-v2 (6 layers, 384 wide) and a bert-base-sized
BERT with random weights (12 layers, 768 wide, 12 heads; same vocabulary), ``TrainingRun``
trains ``strategy=final`` on SST (max length 128, batch ``--batch-size``) in three modes:

- ``fp32``: ``Config(amp=False)``;
- ``amp``: autocast to bf16 where the GPU supports it (fp16 with a GradScaler otherwise),
  the default on CUDA; batches are copied from pinned memory with ``non_blocking=True``;
- ``amp+compile``: the same with ``Config(compile=True)`` (``torch.compile`` of the model).

Each mode runs one untimed warm-up epoch (CUDA context, cuDNN/cuBLAS autotuning, compilation),
then one timed epoch (``EpochReport.examples / epoch_seconds``: the loop synchronises the
device before and after). GPU utilisation is sampled every 50 ms during the timed epoch with
NVML (``pip install nvidia-ml-py``; "n/a" without it); peak memory is
``torch.cuda.max_memory_allocated``. A third, untimed epoch runs under torch's CUDA sync
debug mode, which warns at every call that makes the host wait for the GPU: the table gives
their count against the epoch's steps (a fixed few per epoch, none per step, is the aim).

    python benchmarks/gpu.py --quick     # 512 SST examples
    python benchmarks/gpu.py             # 4,096 SST examples
    python benchmarks/gpu.py --device cpu --quick   # a smoke run of the script without a GPU

Last line: the examples/s ratio amp / fp32 for the packaged backbone.
"""

from __future__ import annotations

import statistics
import sys
import threading
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from berter.config import Config  # noqa: E402
from berter.data.encode import get_tokenizer  # noqa: E402
from berter.data.files import load_data  # noqa: E402
from berter.errors import ArgumentParser, one_line_errors, positive_int  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cs224n"
MODES = {
    "fp32": {"amp": False},
    "amp": {"amp": True},
    "amp+compile": {"amp": True, "compile": True},
}


class Utilisation:
    """GPU utilisation (%) sampled by NVML in a background thread while the block runs."""

    def __init__(self, device: torch.device, interval: float = 0.05):
        self.samples: list[int] = []
        self.interval = interval
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml = pynvml
        except Exception:  # no NVML bindings or driver: report n/a
            self.handle = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            self._stop.wait(self.interval)

    def __enter__(self) -> Utilisation:
        if self.handle is not None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> str:
        return f"{statistics.mean(self.samples):.0f}%" if self.samples else "n/a"


def bert_base_backbone(dropout: float):
    """A bert-base-sized BertModel with random weights (the tokenizer's vocabulary)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    return BertModel(config, add_pooling_layer=False)


def host_syncs(run) -> tuple[int, int] | None:
    """Synchronising CUDA calls in one more, untimed epoch, counted by torch's sync debug mode
    (it warns at each); None off CUDA. The loop itself should make a fixed few per epoch
    (before and after the timed loop, and the epoch's mean loss), none per step."""
    if run.device.type != "cuda":
        return None
    steps = len(run.epoch_batches(run.epoch))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run.train_epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught), steps


def measure(cfg: Config, data, tokenizer, device: torch.device, backbone) -> dict:
    from berter.train.run import TrainingRun

    run = TrainingRun(cfg, data, backbone=backbone, tokenizer=tokenizer, device=device)
    run.train_epoch()  # warm-up: context, autotuning, compilation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Utilisation(device) as util:
        report = run.train_epoch()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "examples_per_s": report.examples / report.epoch_seconds,
        "seconds": report.epoch_seconds,
        "util": util.mean,
        "peak_gib": peak,
        "syncs": host_syncs(run),
    }


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DATA))
    p.add_argument("--quick", action="store_true", help="512 SST examples")
    p.add_argument("--examples", type=positive_int, help="SST training examples (default 4096)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (smoke run)")
    p.add_argument("--models", default="packaged,bert-base", help="packaged and/or bert-base")
    p.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; this benchmark measures the GPU path "
              "(--device cpu runs it as a smoke test)", file=sys.stderr)  # fmt: skip
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in models if m not in ("packaged", "bert-base")] + [
        m for m in modes if m not in MODES
    ]
    if bad:
        print(f"error: unknown model or mode {', '.join(bad)}", file=sys.stderr)
        return 2
    examples = args.examples or (512 if args.quick else 4096)
    base = Config(
        data_dir=args.data_dir, tasks=("sst",), strategy="final", exit_method="none",
        max_train=examples, max_dev=64, calib_max=0, epochs=3, batch_size=args.batch_size,
    )  # fmt: skip
    data = load_data(
        base.data_dir, base.tasks, base.max_train, base.max_dev, base.seed, calib_max=0
    )
    tokenizer = get_tokenizer(base.model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {examples} SST examples, batch "
          f"{args.batch_size}, max length {base.max_len}, strategy=final")  # fmt: skip
    print("\n| backbone | mode | examples/s | x fp32 | GPU util | peak GiB | host syncs / steps |")
    print("|---|---|---|---|---|---|---|")
    ratios: dict[str, float] = {}
    for model in models:
        fp32 = None
        for mode in modes:
            cfg = base.replace(**MODES[mode])
            backbone = bert_base_backbone(cfg.dropout) if model == "bert-base" else None
            r = measure(cfg, data, tokenizer, device, backbone)
            if mode == "fp32":
                fp32 = r["examples_per_s"]
            speed = f"{r['examples_per_s'] / fp32:.2f}" if fp32 else "-"
            if mode == "amp" and fp32:
                ratios[model] = r["examples_per_s"] / fp32
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
            syncs = "{} / {}".format(*r["syncs"]) if r["syncs"] is not None else "-"
            print(f"| {model} | {mode} | {r['examples_per_s']:.0f} | {speed} | {r['util']} "
                  f"| {peak} | {syncs} |", flush=True)  # fmt: skip
    head = ratios.get("packaged", next(iter(ratios.values()), float("nan")))
    print(f"\nexamples/s ratio amp/fp32 (packaged backbone): {head:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
