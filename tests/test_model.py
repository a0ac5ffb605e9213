"""CoCa as a whole: the properties the paper's design promises, and that it learns."""

import math

import pytest
import torch
from conftest import make_tokens
from torch.autograd import gradcheck

from coca_min import PRESETS, CoCa, CoCaConfig
from coca_min.model.losses import coca_loss


def random_batch(config, lengths, total_length, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(lengths), 3, config.image_size, config.image_size, generator=g)
    return images, make_tokens(lengths, total_length, config.vocab_size, generator=g)


def test_forward_shapes_and_unit_norm_embeddings(tiny):
    c = tiny.config
    images, tokens = random_batch(c, [5, 9, 12], 12)
    out = tiny(images, tokens)
    assert out["image_embedding"].shape == (3, c.embed_dim)
    assert out["text_embedding"].shape == (3, c.embed_dim)
    assert out["logits"].shape == (3, 11, c.vocab_size)  # position t predicts tokens[:, t + 1]
    torch.testing.assert_close(out["image_embedding"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["text_embedding"].norm(dim=-1), torch.ones(3))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    image_embedding, caption_tokens = tiny.encode_image(images)
    assert caption_tokens.shape == (3, c.n_caption_queries, c.text_width)
    text_embedding, token_features = tiny.encode_text(tokens)
    assert token_features.shape == (3, 12, c.text_width)
    torch.testing.assert_close(text_embedding, out["text_embedding"])


def test_decoder_halves_are_built_as_the_paper_says(tiny):
    decoder, c = tiny.text_decoder, tiny.config
    assert len(decoder.unimodal_layers) == c.n_uni and len(decoder.multimodal_layers) == c.n_multi
    assert all(layer.cross_attn is None for layer in decoder.unimodal_layers)  # text alone
    assert all(layer.cross_attn is not None for layer in decoder.multimodal_layers)  # text + image


def test_model_built_on_meta_can_be_materialised(micro_config):
    config = CoCaConfig(**{**vars(micro_config), "tie_embeddings": True})
    with torch.device("meta"):
        model = CoCa(config)
    model.to_empty(device="cpu")
    model.reset_parameters()
    decoder = model.text_decoder
    assert decoder.lm_head.weight is decoder.token_embedding.weight  # still tied
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.log_logit_scale.exp().item() == pytest.approx(1 / 0.07)
    images, tokens = random_batch(config, [6, 4], 6)
    assert torch.isfinite(coca_loss(model(images, tokens), tokens, config.pad_id)["loss"])


def test_logit_scale_at_the_cap_still_gets_a_gradient_and_clamping_keeps_it_at_most_100(tiny):
    model = CoCa(tiny.config)
    images, tokens = random_batch(model.config, [4, 4], 4)
    with torch.no_grad():
        model.log_logit_scale.fill_(math.log(100.0))  # s exactly at the cap
    out = model(images, tokens)
    coca_loss(out, tokens, model.config.pad_id)["loss"].backward()
    assert out["logit_scale"].item() == pytest.approx(100.0)
    assert model.log_logit_scale.grad.abs() > 1e-6  # it can still move, down as well as up
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)  # s = e^10 ≈ 22026, e.g. after a large step
    model.clamp_logit_scale_()
    assert model.log_logit_scale.item() == pytest.approx(math.log(100.0))
    assert model(images, tokens)["logit_scale"].item() == pytest.approx(100.0)


@pytest.mark.parametrize("t", [0, 3, 7])
def test_decoder_is_causal_in_both_halves(tiny, t):
    images, tokens = random_batch(tiny.config, [12, 12], 12)
    later = tokens.clone()
    later[:, t + 1 :] = torch.randint(3, tiny.config.vocab_size, later[:, t + 1 :].shape)
    a, b = tiny(images, tokens), tiny(images, later)
    _, features_a = tiny.encode_text(tokens)
    _, features_b = tiny.encode_text(later)
    # unimodal half: features of positions 0..t depend only on tokens 0..t
    torch.testing.assert_close(features_a[:, : t + 1], features_b[:, : t + 1], atol=1e-6, rtol=0)
    # multimodal half: logits at positions 0..t (predicting tokens 1..t+1) likewise
    torch.testing.assert_close(a["logits"][:, : t + 1], b["logits"][:, : t + 1], atol=1e-6, rtol=0)
    # ...and the changed tokens do reach the later positions
    assert not torch.allclose(a["logits"][:, t + 1 :], b["logits"][:, t + 1 :], atol=1e-3)


def test_text_embedding_does_not_depend_on_the_image(tiny):
    _, tokens = random_batch(tiny.config, [6, 9], 10)
    images_a, _ = random_batch(tiny.config, [6, 9], 10, seed=1)
    images_b, _ = random_batch(tiny.config, [6, 9], 10, seed=2)
    torch.testing.assert_close(
        tiny(images_a, tokens)["text_embedding"], tiny(images_b, tokens)["text_embedding"], atol=0, rtol=0
    )


def test_text_embedding_ignores_padding(tiny):
    c = tiny.config
    _, text = random_batch(c, [7], 7)  # one text of 7 tokens, no padding
    reference, _ = tiny.encode_text(text)
    for length in [8, 15, c.context_length]:
        padded = torch.full((1, length), c.pad_id)
        padded[:, :7] = text
        embedding, _ = tiny.encode_text(padded)
        torch.testing.assert_close(embedding, reference, atol=1e-6, rtol=0)
    # ...also inside a batch beside longer texts
    _, batch = random_batch(c, [7, 20, 30], 30, seed=3)
    batch[0, :7] = text
    embedding, _ = tiny.encode_text(batch)
    torch.testing.assert_close(embedding[:1], reference, atol=1e-6, rtol=0)


def test_text_embedding_sees_the_last_real_token(tiny):
    _, text = random_batch(tiny.config, [7], 10)
    other = text.clone()
    other[0, 5] = 3 if other[0, 5] != 3 else 4  # the last word before [EOS]
    assert not torch.allclose(tiny.encode_text(text)[0], tiny.encode_text(other)[0], atol=1e-4)


def contrastive_pooler_input(model, images):
    seen = {}
    handle = model.contrastive_pooler.register_forward_hook(lambda m, args, out: seen.update(context=args[0]))
    with torch.no_grad():
        vit_tokens = model.image_encoder(images)
        caption_tokens = model.caption_pooler(vit_tokens)
        model.encode_image(images)
    handle.remove()
    return seen["context"], vit_tokens, caption_tokens


def test_cascade_contrastive_pooler_reads_the_caption_poolers_output(tiny):
    images, _ = random_batch(tiny.config, [4, 4], 4)
    context, vit_tokens, caption_tokens = contrastive_pooler_input(tiny, images)
    assert context.shape == caption_tokens.shape  # (B, n_caption_queries, D)
    torch.testing.assert_close(context, caption_tokens, atol=0, rtol=0)


def test_parallel_contrastive_pooler_reads_the_vit_tokens():
    torch.manual_seed(0)
    model = CoCa(CoCaConfig(pooler_mode="parallel")).eval()
    images, _ = random_batch(model.config, [4, 4], 4)
    context, vit_tokens, caption_tokens = contrastive_pooler_input(model, images)
    assert context.shape == vit_tokens.shape  # (B, 36 patches, Dv)
    torch.testing.assert_close(context, vit_tokens, atol=0, rtol=0)


def test_all_padding_caption_gives_finite_losses_and_gradients(tiny):
    model = CoCa(tiny.config)
    images, tokens = random_batch(model.config, [6, 6], 8)
    tokens[1] = model.config.pad_id  # the second caption is nothing but padding
    losses = coca_loss(model(images, tokens), tokens, model.config.pad_id)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    tokens[:] = model.config.pad_id  # and a batch with no real token at all
    losses = coca_loss(model(images, tokens), tokens, model.config.pad_id)
    assert all(torch.isfinite(v) for v in losses.values())


def test_whole_model_loss_gradcheck_float64(micro_config):
    # every input pixel, exactly: a model small enough for the full Jacobian
    torch.manual_seed(0)
    model = CoCa(micro_config).double()
    images, tokens = random_batch(micro_config, [6, 4], 6)
    images = images.double().requires_grad_()
    loss = lambda x: coca_loss(model(x, tokens), tokens, micro_config.pad_id)["loss"]
    assert gradcheck(loss, (images,))


def test_whole_model_loss_gradcheck_float64_text_path(micro_config):
    # the text side too: [CLS], position embeddings and both projections, through every layer
    torch.manual_seed(0)
    model = CoCa(micro_config).double()
    images, tokens = random_batch(micro_config, [6, 4], 6)
    images = images.double()
    names = ["text_decoder.cls_embedding", "text_decoder.pos_embedding",
             "text_decoder.text_projection.weight", "image_projection.weight"]  # fmt: skip
    params = dict(model.named_parameters())
    inputs = tuple(params[n].detach().clone().requires_grad_() for n in names)

    def loss(*values):
        outputs = torch.func.functional_call(model, {**params, **dict(zip(names, values))}, (images, tokens))
        return coca_loss(outputs, tokens, micro_config.pad_id)["loss"]

    assert gradcheck(loss, inputs)


def test_tiny_model_loss_gradcheck_float64():
    # the real tiny preset: fast mode checks a random directional derivative of the loss
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"]).double()
    images, tokens = random_batch(model.config, [9, 6], 9)
    images = images.double().requires_grad_()
    loss = lambda x: coca_loss(model(x, tokens), tokens, model.config.pad_id)["loss"]
    assert gradcheck(loss, (images,), fast_mode=True)


def test_tiny_model_overfits_eight_pairs():
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"])
    images, tokens = random_batch(model.config, [12, 9, 7, 12, 10, 5, 8, 11], 12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for step in range(200):
        loss = coca_loss(model(images, tokens), tokens, model.config.pad_id)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] < 0.05 * losses[0]:
            break
    assert losses[-1] < 0.05 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f}"
