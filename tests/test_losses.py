"""The contrastive and captioning losses against hand computations; float64 gradient checks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from coca_min.model.losses import LowMemoryCaptionLoss, caption_loss, caption_loss_for_training, coca_loss, contrastive_loss


def test_contrastive_loss_is_paper_eq_1_on_a_worked_2x2_example():
    # images x1 = (1, 0), x2 = (0, 1); texts y1 = (1, 0), y2 = (0.6, 0.8); scale s = 1/σ = 2
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # s · x_i·y_j = [[2, 1.2], [0, 1.6]]. Paper eq. 1, term by term:
    # L_con = -1/N ( Σ_i log e^{s x_i·y_i} / Σ_j e^{s x_i·y_j}  +  Σ_i log e^{s y_i·x_i} / Σ_j e^{s y_i·x_j} )
    rows = math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))) + math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))
    columns = math.log(math.exp(2) / (math.exp(2) + math.exp(0))) + math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    expected = -(rows + columns) / 2  # N = 2
    assert expected == pytest.approx((0.3711 + 0.1839 + 0.1269 + 0.5130) / 2, abs=1e-4)  # by hand: 0.5975
    got = contrastive_loss(images, texts, torch.tensor(2.0))
    assert abs(got.item() - expected) < 1e-6


def test_contrastive_loss_is_twice_clips_mean_of_the_two_directions():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1)
    s = torch.tensor(7.0, dtype=torch.float64)
    labels = torch.arange(6)
    clip_mean = (F.cross_entropy(s * x @ y.T, labels) + F.cross_entropy(s * y @ x.T, labels)) / 2
    torch.testing.assert_close(contrastive_loss(x, y, s), 2 * clip_mean, atol=1e-12, rtol=0)


def test_contrastive_loss_is_symmetric_in_images_and_texts():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(5, 8), dim=-1)
    y = F.normalize(torch.randn(5, 8), dim=-1)
    s = torch.tensor(10.0)
    torch.testing.assert_close(contrastive_loss(x, y, s), contrastive_loss(y, x, s))


def test_caption_loss_equals_explicit_log_softmax_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[5, 6, 2, 0], [3, 2, 0, 0]])  # 0 is padding
    log_probs = logits.log_softmax(dim=-1)
    picked = [-log_probs[b, t, targets[b, t]] for b in range(2) for t in range(4) if targets[b, t] != 0]
    expected = sum(picked) / len(picked)  # 5 real targets
    assert len(picked) == 5
    torch.testing.assert_close(caption_loss(logits, targets, pad_id=0), expected)
    # whatever the logits at padding targets say, the loss does not move
    changed = logits.clone()
    changed[targets == 0] = 100 * torch.randn_like(changed[targets == 0])
    torch.testing.assert_close(caption_loss(changed, targets, pad_id=0), expected)


def test_caption_loss_all_padding_is_zero_not_nan():
    loss = caption_loss(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), pad_id=0)
    assert loss.item() == 0.0


def test_coca_loss_weights_caption_twice_and_contrastive_once():
    torch.manual_seed(0)
    tokens = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])
    outputs = {
        "image_embedding": F.normalize(torch.randn(2, 8), dim=-1),
        "text_embedding": F.normalize(torch.randn(2, 8), dim=-1),
        "logits": torch.randn(2, 4, 7),
        "logit_scale": torch.tensor(1 / 0.07),
    }
    parts = coca_loss(outputs, tokens, pad_id=0)
    l_con = contrastive_loss(outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"])
    l_cap = caption_loss(outputs["logits"], tokens[:, 1:], pad_id=0)
    torch.testing.assert_close(parts["contrastive"], l_con)
    torch.testing.assert_close(parts["caption"], l_cap)
    torch.testing.assert_close(parts["loss"], 1.0 * l_con + 2.0 * l_cap)


def test_coca_loss_over_a_step_is_this_shares_token_sum_over_the_steps_count_and_refuses_half_the_arguments():
    torch.manual_seed(0)
    tokens = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])  # 3 + 2 real targets
    outputs = {"image_embedding": F.normalize(torch.randn(2, 8), dim=-1), "text_embedding": F.normalize(torch.randn(2, 8), dim=-1),
               "logits": torch.randn(2, 4, 7), "logit_scale": torch.tensor(1 / 0.07)}  # fmt: skip
    local_mean = caption_loss(outputs["logits"], tokens[:, 1:], pad_id=0)
    # a step of 2 processes with 12 real targets in all: W · (this one's sum of 5) / 12
    share = coca_loss(outputs, tokens, pad_id=0, gather=lambda t: torch.cat([t, t]), world_size=2, step_tokens=torch.tensor(12))
    torch.testing.assert_close(share["caption"], 2 * 5 * local_mean / 12)
    with pytest.raises(ValueError, match="needs step_tokens"):
        coca_loss(outputs, tokens, pad_id=0, gather=lambda t: torch.cat([t, t]), world_size=2)
    with pytest.raises(ValueError, match=r"world_size 2: the contrastive loss needs the gather"):
        coca_loss(outputs, tokens, pad_id=0, world_size=2, step_tokens=torch.tensor(12))


def test_contrastive_loss_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    assert gradcheck(
        lambda x, y, s: contrastive_loss(F.normalize(x, dim=-1), F.normalize(y, dim=-1), s), (x, y, s)
    )


def test_caption_loss_gradcheck_float64():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[5, 6, 2, 0], [3, 2, 0, 0]])
    assert gradcheck(lambda z: caption_loss(z, targets, pad_id=0), (logits,))


def test_low_memory_caption_loss_gradcheck_float64():
    torch.manual_seed(0)
    logits = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1, 0, 4, 2, 0, 3, 1])  # 0 is padding
    for chunk_rows in [1, 3, 7]:  # chunks that do and do not divide the rows
        assert torch.autograd.gradcheck(lambda x: LowMemoryCaptionLoss.apply(x, targets, 0, chunk_rows), (logits,))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 2e-3)])
def test_low_memory_caption_loss_equals_the_plain_one_in_value_and_gradient(dtype, tolerance):
    torch.manual_seed(0)
    logits = (torch.randn(3, 6, 50) * 3).to(dtype)
    targets = torch.randint(0, 50, (3, 6))
    targets[0, 4:] = 0  # padding
    plain_input = logits.clone().requires_grad_()
    plain = caption_loss(plain_input, targets, 0)
    plain.backward()
    ours_input = logits.clone().requires_grad_()
    ours = LowMemoryCaptionLoss.apply(ours_input.flatten(0, 1), targets.flatten(), 0, 4)
    ours.backward()
    assert ours.item() == pytest.approx(plain.item(), rel=1e-6)  # both reduce in float32
    assert ours_input.grad.dtype == dtype  # the gradient of the logits' own dtype: no float32 copy
    torch.testing.assert_close(ours_input.grad.float(), plain_input.grad.float(), atol=tolerance, rtol=0)
    assert caption_loss_for_training(logits, targets, 0).item() == pytest.approx(plain.item(), rel=1e-6)


def test_low_memory_caption_loss_keeps_no_float32_copy_of_bf16_logits():
    # what autograd keeps for the backward pass, in bytes: the plain loss keeps float32 copies
    # of the (B·T, V) logits, the low-memory one the bf16 logits and a number per position
    logits = torch.randn(4, 8, 1000).bfloat16().requires_grad_()
    targets = torch.randint(1, 1000, (4, 8))

    def saved_bytes(loss_fn):
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel() * t.element_size()) or t, lambda t: t):
            loss_fn()
        return sum(kept)

    plain = saved_bytes(lambda: caption_loss(logits, targets, 0))
    ours = saved_bytes(lambda: caption_loss_for_training(logits, targets, 0))
    bf16_logits = logits.numel() * 2
    assert plain >= 2 * bf16_logits  # at least one float32 copy
    assert ours <= bf16_logits + 32 * 8 * 3  # the logits, and per position its log-sum-exp (and the targets)


def test_bf16_autocast_forward_and_backward_agree_with_float32_on_the_cpu():
    # the GPU's training path (bf16 autocast, the low-memory caption loss) run on the CPU. bf16
    # keeps about 3 significant digits: the loss within 1% (measured 4e-6), the whole gradient
    # within 5% (measured 1.8%) and each parameter's in the same direction (cosine > 0.95,
    # lowest measured 0.98, a LayerNorm bias)
    from coca_min import PRESETS, CoCa

    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"])
    images = torch.randn(8, 3, 48, 48)
    tokens = torch.randint(3, 366, (8, 32))
    tokens[:, 0], tokens[:, 20], tokens[:, 21:] = 1, 2, 0
    grads = {}
    for dtype in [torch.float32, torch.bfloat16]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            outputs = model(images, tokens)
            loss = coca_loss(outputs, tokens, pad_id=0)["loss"]
        assert outputs["logits"].dtype == dtype and loss.dtype == torch.float32
        loss.backward()
        grads[dtype] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (full, full_grads), (half, half_grads) = grads[torch.float32], grads[torch.bfloat16]
    assert half == pytest.approx(full, rel=0.01)
    whole, whole_half = torch.cat([g.flatten() for g in full_grads.values()]), torch.cat([half_grads[n].flatten() for n in full_grads])
    assert (whole_half - whole).norm() < 0.05 * whole.norm()
    for name, g in full_grads.items():
        if g.norm() > 1e-6:
            cosine = torch.nn.functional.cosine_similarity(g.flatten(), half_grads[name].flatten(), dim=0)
            assert cosine > 0.95, (name, cosine.item())
