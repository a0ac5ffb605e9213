"""torch.compile on the CPU: train.py's compiled step trains as the eager one does.

train.py compiles by default on a GPU (`--compile`), where tests/test_gpu.py checks the plain
model compiled; this is the code path of several processes on a CPU, so that a machine without
a GPU exercises it too: torch.compile around the DDP model, and gradient accumulation's first
pass compiled. Inductor compiles the graphs to C++ (a minute or two on 2 cores, with an empty
cache), so the test is its own run: `python -m pytest -q -m compile`.
"""

from contextlib import nullcontext

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from coca_min import CoCa
from coca_min.train.step import embeddings, forward_backward
from coca_min.train.trainer import Setup, wrap_for_training

pytestmark = pytest.mark.compile


def test_compiled_ddp_with_accumulation_gives_the_eager_loss_and_gradients(tmp_path, micro_config):
    # train.py under torchrun with --compile: torch.compile wraps DDP (so that dynamo's
    # DDPOptimizer can split the graph at the buckets), gradients are views of the buckets, and
    # --accum 2's first pass (the encoders without gradient) is compiled too. One process of a
    # gloo group stands for the ranks: the property is the compiled step's, not the all-reduce's.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = CoCa(micro_config)  # one block of each kind: the least for inductor to compile
        eager = CoCa(micro_config)
        eager.load_state_dict(model.state_dict())
        setup = Setup(torch.device("cpu"), rank=0, world=2, local_rank=0, autocast=nullcontext(), compile=True,
                      workers=0, micro_batch=4)  # fmt: skip  (world 2: what makes wrap_for_training use DDP)
        wrapped = wrap_for_training(model, setup)
        assert isinstance(wrapped._orig_mod, DistributedDataParallel) and wrapped._orig_mod.gradient_as_bucket_view
        g = torch.Generator().manual_seed(0)
        images = torch.randn(8, 3, 8, 8, generator=g)
        tokens = torch.randint(3, 16, (8, 6), generator=g)
        tokens[:, 0], tokens[:, 4], tokens[:, 5:] = 1, 2, 0  # [BOS], 3 words, [EOS], padding
        batches = [(images[:4], tokens[:4]), (images[4:], tokens[4:])]
        compiled = forward_backward(wrapped, batches, pad_id=0, embed=torch.compile(embeddings))
        reference = forward_backward(eager, batches, pad_id=0)
        for key in ("loss", "contrastive", "caption"):
            assert compiled[key].item() == pytest.approx(reference[key].item(), rel=1e-5), key
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    finally:
        dist.destroy_process_group()
