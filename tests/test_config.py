"""Presets reproduce the paper's Table 1 parameter counts; the comments beside them are true."""

import re
from pathlib import Path

import pytest
import torch

import coca_min.config
from coca_min import PRESETS, CoCa, CoCaConfig, count_parameters, shapes


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
