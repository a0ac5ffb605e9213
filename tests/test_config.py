"""Presets reproduce the paper's Table 1 parameter counts; the comments beside them are true."""

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

import coca_min.config
from coca_min import PRESETS, CoCa, CoCaConfig, count_parameters
from coca_min.data.synthetic import shapes


def counts(name):
    with torch.device("meta"):  # no memory: the 2.1B model is only counted
        model = CoCa(PRESETS[name])
    return count_parameters(model)


# Table 1 (image encoder, text decoder) in millions, and the tolerance on each figure
TABLE_1 = {"base": (86, 297, 383), "large": (303, 484, 787)}


@pytest.mark.parametrize("name", ["base", "large"])
def test_paper_presets_match_table_1(name):
    n = counts(name)
    encoder, decoder, total = TABLE_1[name]
    assert n["encoder"] / 1e6 == pytest.approx(encoder, rel=0.01)
    assert n["decoder"] / 1e6 == pytest.approx(decoder, rel=0.01)
    assert (n["encoder"] + n["decoder"]) / 1e6 == pytest.approx(total, rel=0.01)


def test_coca_preset_matches_table_1():
    n = counts("coca")
    assert n["encoder"] / 1e6 == pytest.approx(1011, rel=0.01)
    assert (n["encoder"] + n["decoder"]) / 1e9 == pytest.approx(2.1, rel=0.02)


def test_only_coca_ties_embedding_and_lm_head():
    for name in PRESETS:
        with torch.device("meta"):
            decoder = CoCa(PRESETS[name]).text_decoder
        tied = decoder.lm_head.weight is decoder.token_embedding.weight
        assert tied == (name == "coca"), name


def test_tiny_preset_fits_the_laptop_budget():
    n = counts("tiny")
    assert 1e6 <= n["total"] <= 5e6
    assert PRESETS["tiny"].image_size == shapes.IMAGE_SIZE  # it trains on tiny_data as it is


def test_parameter_comments_in_config_are_measured_values():
    source = Path(coca_min.config.__file__).read_text()
    pattern = (r"# (\w+): encoder ([\d.]+)M \+ decoder ([\d.]+)M = ([\d.]+)M; "
               r"poolers ([\d.]+)M; total ([\d.]+)M parameters")  # fmt: skip
    found = re.findall(pattern, source)
    assert sorted(row[0] for row in found) == sorted(PRESETS)
    for name, *stated in found:
        n = counts(name)
        measured = [n["encoder"], n["decoder"], n["encoder"] + n["decoder"], n["poolers"], n["total"]]
        for text, value in zip(stated, measured):
            half_last_digit = 0.5 * 10 ** -len(text.split(".")[1])  # "0.83" -> 0.005
            assert abs(float(text) - value / 1e6) <= half_last_digit + 1e-9, (name, text, value)


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(image_size=64, patch_size=6), "multiple of patch_size"),
        (dict(text_width=100, text_heads=3), "divisible"),
        (dict(pooler_mode="sideways"), "cascade"),
        (dict(vocab_size=2), "vocab_size"),
        (dict(pad_id=2), "three different ids"),  # pad and eos would collide
    ],
)
def test_inconsistent_config_is_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        CoCaConfig(**bad)


def test_config_differences_names_the_fields():
    assert PRESETS["tiny"].differences(CoCaConfig(vision_layers=6)) == {"vision_layers": (4, 6)}


def weight_tensors(model):
    """(name, tensor) of every weight matrix, embedding, position embedding, [CLS] and query."""
    for name, p in model.named_parameters():
        if p.dim() >= 2 and ".ln" not in name and not name.startswith("ln"):
            yield name, p.detach()


TRUNCATED_STD = 0.02 * 0.8796  # a normal with std 0.02 cut at ±2σ keeps std 0.02 · 0.8796


@pytest.mark.parametrize("name", ["small", "base", "large", "coca"])
def test_the_paper_sizes_start_with_the_standard_transformer_initialisation(name):
    # the preset's own scheme on a narrow copy (one layer each, width 256): std 0.02 does not
    # depend on the width, and the full models would take gigabytes
    assert PRESETS[name].init == "standard"
    torch.manual_seed(0)
    narrow = dataclasses.replace(
        PRESETS[name], vision_width=256, text_width=256, embed_dim=256, vision_heads=4, text_heads=4,
        pooler_heads=4, vision_mlp=512, text_mlp=512, vision_layers=1, n_uni=1, n_multi=1, vocab_size=1000,
        image_size=4 * PRESETS[name].patch_size, n_caption_queries=16,
    )  # fmt: skip
    model = CoCa(narrow)
    for tensor_name, w in weight_tensors(model):
        assert w.abs().max() <= 0.04 + 1e-7, tensor_name  # truncated at 2σ
        if w.numel() >= 4096:  # enough numbers for a 5% check of the spread
            assert abs(w.std().item() / TRUNCATED_STD - 1) < 0.05, (tensor_name, w.std().item())
            assert abs(w.mean().item()) < 0.002, tensor_name
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), module_name
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)) and not module.bias.any(), module_name
    assert model.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    if narrow.tie_embeddings:
        assert model.text_decoder.lm_head.weight is model.text_decoder.token_embedding.weight


def test_the_tiny_preset_keeps_its_tuned_initialisation():
    assert PRESETS["tiny"].init == "tuned" and CoCaConfig().init == "tuned"
    torch.manual_seed(0)
    model = CoCa(PRESETS["tiny"])
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.numel() >= 4096:  # std 1/√fan_in
            assert abs(module.weight.std().item() * module.in_features**0.5 - 1) < 0.05, module_name
    std = {name: p.std().item() for name, p in model.named_parameters() if p.numel() > 1}
    assert std["image_encoder.pos_embed"] == pytest.approx(1.0, rel=0.05)  # 36 x 64: where a patch is
    assert std["caption_pooler.queries"] == pytest.approx(3.0, rel=0.05)  # 64 x 128: queries that differ
    assert std["text_decoder.token_embedding.weight"] == pytest.approx(0.02, rel=0.05)
    assert std["text_decoder.pos_embedding"] == pytest.approx(0.01, rel=0.1)
    assert model.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_an_unknown_initialisation_is_refused():
    with pytest.raises(ValueError, match=r"init must be 'tuned' or 'standard', got 'xavier'"):
        CoCaConfig(init="xavier")
