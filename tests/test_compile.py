"""torch.compile on the CPU: the compiled tiny model trains as the eager one does.

train.py compiles by default on a GPU (`--compile`), where tests/test_gpu.py checks the same
property; this is that code path on a CPU, so that a machine without a GPU exercises it too.
Inductor compiles the forward and backward graphs to C++ (about a minute on 2 cores, with an
empty cache), so the test is its own run: `python -m pytest -q -m compile`.
"""

import pytest
import torch

from coca_min import PRESETS, CoCa
from coca_min.model.losses import coca_loss

pytestmark = pytest.mark.compile


def loss_and_grads(model, images, tokens):
    model.zero_grad()
    loss = coca_loss(model(images, tokens), tokens, pad_id=0)["loss"]
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_compiled_and_eager_give_the_same_loss_and_gradients_on_the_cpu():
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"])
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 48, 48, generator=g)
    tokens = torch.randint(3, 366, (8, 24), generator=g)
    tokens[:, 0], tokens[:, 15], tokens[:, 16:] = 1, 2, 0  # [BOS], 14 words, [EOS], padding
    eager, eager_grad = loss_and_grads(model, images, tokens)
    compiled, compiled_grad = loss_and_grads(torch.compile(model), images, tokens)
    assert compiled == pytest.approx(eager, rel=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-4)
