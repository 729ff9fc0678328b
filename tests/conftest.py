"""Tiny models run fastest on one thread; integration tests get the machine's cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(before if request.node.get_closest_marker("integration") else 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A random 3-layer BERT saved with the packaged tokenizer: a --model directory."""
    from tiny import tiny_backbone
    from transformers import AutoTokenizer

    from berter.data.encode import packaged_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tiny_backbone(layers=3).save_pretrained(path)
    AutoTokenizer.from_pretrained(packaged_model_path()).save_pretrained(path)
    return str(path)

