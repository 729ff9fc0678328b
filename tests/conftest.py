"""Tiny models run fastest on one thread; integration tests get the machine's cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(before if request.node.get_closest_marker("integration") else 1)
    yield
    torch.set_num_threads(before)
