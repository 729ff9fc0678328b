"""The sweep driver with a backbone of every encoder family: a one-epoch demo sweep each, and
the pre-flight's one-line refusal of a model type no adapter reads.

Apart from tests/test_families.py because each sweep starts Ray trials (about 12 s each).
"""

from __future__ import annotations

import pytest
from test_families import MODEL_TYPES, tiny_family
from transformers import AutoTokenizer, GPT2Config

from berter.data.encode import packaged_model_path
from berter.errors import ConfigError


def model_dir(path, backbone_or_config) -> str:
    """A --model directory: the weights (or just a config) and the packaged tokenizer."""
    backbone_or_config.save_pretrained(path)
    AutoTokenizer.from_pretrained(packaged_model_path()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_one_epoch_demo_sweep_of_every_family_terminates_every_trial(
    local_ray, model_type, tmp_path
):
    from berter.sweep.cli import main as sweep_main
    from berter.sweep.store import read_results

    model = model_dir(tmp_path / model_type, tiny_family(model_type))
    variants = "smart=off,cos=off,slf=off,strategy=joint,exit=entropy,concat=after"
    rc = sweep_main([
        "--data", "demo", "--model", model, "--max-train", "16", "--max-dev", "8",
        "--max-len", "32", "--results", str(tmp_path), "--name", "family",
        "--search", "lr", "--variants", variants, "--num-samples", "1", "--epochs", "1",
        "--scheduler", "fifo",
    ])  # fmt: skip
    assert rc == 0
    trials = read_results(tmp_path / "family")["trials"]
    assert len(trials) == 1 and set(trials.status) == {"terminated"}


def test_the_sweep_plan_refuses_an_unsupported_model_type_in_one_line(tmp_path):
    from berter.sweep.cli import build_parser
    from berter.sweep.plan import make_plan

    model = model_dir(tmp_path / "gpt2", GPT2Config(n_layer=2, n_embd=32, n_head=2))
    argv = ["--search", "lr", "--data", "demo", "--model", model, "--results", str(tmp_path)]
    with pytest.raises(ConfigError) as info:
        make_plan(build_parser().parse_args(argv))
    message = str(info.value)
    assert "'gpt2'" in message and "roberta" in message and "\n" not in message
