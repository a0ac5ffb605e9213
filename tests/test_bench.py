"""bench.py and the FLOPs formula it prints: the formula equals what torch counts; each mode
(training, decoding, the data loader, the tokenizer) runs on the CPU at tiny sizes and prints
what it promises; coca_min's model is freed before a compared model is built; the GPU peak
table tells the H100s apart. No test depends on the speed."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bench
from coca_min import PRESETS, CoCa
from coca_min.model.flops import forward_flops, training_flops
from coca_min.model.losses import coca_loss


def counted(run):
    # the plain attention kernel, whose matrix products the counter sees (not the fused one)
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


@pytest.mark.parametrize("pooler_mode", ["cascade", "parallel"])
def test_the_flops_formula_equals_torchs_count_exactly(pooler_mode):
    config = dataclasses.replace(PRESETS["tiny"], pooler_mode=pooler_mode)
    torch.manual_seed(0)
    model, B = CoCa(config), 3
    images = torch.randn(B, 3, config.image_size, config.image_size)
    tokens = torch.randint(3, config.vocab_size, (B, config.context_length))  # full length: no padding
    assert counted(lambda: model(images, tokens)) == B * sum(forward_flops(config).values())
    step = counted(lambda: coca_loss(model(images, tokens), tokens, 0)["loss"].backward())
    assert step == B * training_flops(config, B)


CPU = ["--device", "cpu", "--size", "tiny"]  # these tests are CPU tests, on a GPU machine too (.ci/gpu)


def test_training_benchmark_prints_throughput_counted_flops_memory_and_the_split(capsys):
    bench.main([*CPU, "--batch-size", "4", "--steps", "2", "--warmup", "1", "--peak-tflops", "1"])
    out = capsys.readouterr().out
    assert "coca_min bench | tiny | CPU" in out and "batch 4 | fp32" in out
    assert "coca_min: " in out and "images/s" in out and "tokens/s" in out
    assert "ms a step (2 steps back to back, perf_counter)" in out
    per_image = training_flops(PRESETS["tiny"], 4) / 1e9
    assert f"counted {per_image:.3f} GFLOP (FlopCounterMode), the formula {per_image:.3f}" in out
    assert "(counted / formula 1.000)" in out and "TFLOP/s achieved (counted FLOPs)" in out
    assert "% of 1 TFLOP/s (given)" in out and "peak memory" in out
    assert "split, from a separate pass that synchronizes after each part: forward" in out
    assert "backward" in out and "optimizer" in out


def test_the_counted_flops_of_a_step_equal_the_formula(capsys):
    # The formula counts the matrix products, 2 FLOPs per multiply-add, and nothing elementwise:
    # exactly what FlopCounterMode counts (the first test). bench.py counts under the plain
    # attention kernel, whose products the counter sees (without it, on the CPU, it misses
    # attention: about 7% of the tiny step). So the tolerance is zero: a drift is a bug.
    args = bench.parse_args([*CPU, "--batch-size", "3", "--steps", "1", "--warmup", "0"])
    config, device = PRESETS["tiny"], torch.device("cpu")
    batch = bench.synthetic_batch(config, 3, device, torch.Generator().manual_seed(0))
    result = bench.measure(bench.coca_min_model, config, batch, args, device)
    assert result["flops_per_step"] == 3 * training_flops(config, 3)
    assert result["step_s"] > 0 and set(result["split_s"]) == {"forward", "backward", "optimizer"}


def test_coca_min_is_freed_before_the_peer_is_built(capsys, monkeypatch):
    import weakref

    refs, alive_when_peer_built, build = [], [], bench.coca_min_model

    def ours(config, device):
        model, step_loss = build(config, device)
        refs.append(weakref.ref(model))
        return model, step_loss

    def peer(config, device):  # stands in for open_clip (not installed here): another CoCa
        alive_when_peer_built.append(refs[0]() is not None)
        return build(config, device)

    monkeypatch.setattr(bench, "coca_min_model", ours)
    monkeypatch.setattr(bench, "open_clip_model", peer)
    bench.main([*CPU, "--batch-size", "2", "--steps", "1", "--warmup", "1", "--compare", "open_clip"])
    out = capsys.readouterr().out
    assert alive_when_peer_built == [False]
    assert "open_clip: " in out and "coca_min's formula at this shape" in out and "x the images/s" in out


@pytest.mark.parametrize(
    "name, tflops",
    [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
     ("NVIDIA H200 NVL", 835), ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA L40S", 362),
     ("NVIDIA L40", 181), ("NVIDIA L4", 121), ("NVIDIA GeForce RTX 4090", 165.2), ("Tesla V100-SXM2-16GB", None)],
)  # fmt: skip
def test_the_peak_table_tells_the_h100s_apart(name, tflops):
    assert bench.peak_tflops(name) == tflops


def test_bf16_autocast_runs_on_the_cpu(capsys):
    bench.main([*CPU, "--batch-size", "2", "--steps", "1", "--warmup", "0", "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert "| bf16" in out and "MFU: no peak known (--peak-tflops)" in out


def test_decoding_benchmark_gives_the_same_tokens_with_and_without_the_cache(capsys):
    bench.main([*CPU, "--decode", "--batch-size", "2", "--new-tokens", "5", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "decoding 5 new tokens, batch 2 (median of 1): cached" in out and "same tokens: True" in out


def test_a_paper_size_training_step_on_a_cpu_is_refused_in_one_line():
    with pytest.raises(SystemExit, match=r"^error: a base training step on a CPU takes minutes"):
        bench.main(["--size", "base", "--device", "cpu"])


def test_comparing_with_open_clip_says_when_it_is_not_installed(capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_open_clip(name, *args, **kwargs):
        if name == "open_clip":
            raise ImportError("No module named 'open_clip'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_open_clip)
    bench.main([*CPU, "--batch-size", "2", "--steps", "1", "--warmup", "0", "--compare", "open_clip"])
    assert "open_clip: not installed" in capsys.readouterr().out


def image_files(folder, n=5):
    """n small JPEGs of different shapes in folder -> [(name, caption)]."""
    from PIL import Image

    folder.mkdir()
    rng, files = np.random.default_rng(0), []
    for i in range(n):
        pixels = rng.integers(0, 256, (40 + 8 * i, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
        files.append((f"{i}.jpg", f"a photo number {i}"))
    return files


@pytest.mark.parametrize("kind, workers", [("jsonl", 0), ("csv", 0), ("coco", 0), ("shards", 1)])
def test_the_data_benchmark_times_each_kind_of_data(tmp_path, capsys, kind, workers):
    import csv
    import json

    from coca_min.data.shards import write_shards

    files = image_files(tmp_path / "images")
    if kind == "jsonl":
        data = tmp_path / "train.jsonl"
        data.write_text("".join(json.dumps({"image": name, "caption": caption}) + "\n" for name, caption in files))
    elif kind == "csv":
        data = tmp_path / "train.csv"
        with open(data, "w", newline="") as f:
            csv.writer(f).writerows([("image", "caption"), *files])
    elif kind == "coco":
        data = tmp_path / "captions.json"
        images = [{"id": i, "file_name": name} for i, (name, _) in enumerate(files)]
        notes = [{"image_id": i, "caption": caption} for i, (_, caption) in enumerate(files)]
        data.write_text(json.dumps({"images": images, "annotations": notes}))
    else:
        data = tmp_path / "shards"
        samples = [(name[:-4], (tmp_path / "images" / name).read_bytes(), [c]) for name, c in files]
        write_shards(samples, data, per_shard=3)  # 2 shards, keys "0" to "4"
    bench.main(["--data", str(data), "--images", str(tmp_path / "images"), "--size", "tiny", "--batch-size", "2",
                "--steps", "4", "--workers", str(workers), "--target-images-per-s", "100"])  # fmt: skip
    out = capsys.readouterr().out
    assert f"coca_min bench | data | {data} | tiny, 48 px | batch 2" in out
    assert re.search(r"images/s per worker \| [78] images in 4 batches", out)  # 5 images: it goes round again
    assert re.search(r"a GPU at 100 images/s needs about \d+ workers of this machine", out)


def test_a_manifest_without_its_image_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--data", str(tmp_path / "train.jsonl")])
    assert "needs --images" in capsys.readouterr().err


def test_synthetic_captions_have_the_asked_number_of_distinct_words():
    captions = bench.synthetic_captions(300, 120, seed=1)
    words = [caption.split() for caption in captions]
    assert len(captions) == 300 and all(8 <= len(w) <= 15 for w in words)
    distinct = {word for w in words for word in w}
    assert len(distinct) == 120 and all(re.fullmatch("[a-z]{3,10}", word) for word in distinct)
    assert captions == bench.synthetic_captions(300, 120, seed=1)  # seeded
    counts = sorted((sum(w.count(word) for w in words) for word in distinct), reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]  # Zipf-like: the commonest word far above the median one


def test_the_tokenizer_benchmark_prints_its_figures(capsys):
    bench.main(["--tokenizer", "--captions", "300", "--words", "100", "--merges", "20"])
    out = capsys.readouterr().out
    assert "coca_min bench | tokenizer" in out
    figures = r"tokenizer: 300 captions, 100 distinct words, 20 merges learned \(of 20\) in [\d.]+ s: [\d.]+ ms per merge"
    assert re.search(figures, out)


def test_the_trainer_step_mode_times_train_pys_own_steps_on_real_files(tmp_path, capsys):
    import json

    files = image_files(tmp_path / "images")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"image": name, "caption": caption}) + "\n" for name, caption in files))
    bench.main([*CPU, "--trainer-step", "--data", str(data), "--images", str(tmp_path / "images"), "--batch-size", "2",
                "--steps", "3", "--warmup", "1", "--log-every", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert re.search(r"trainer step: [\d.]+ ms \| [\d.,]+ images/s over 3 steps \(data: .*train\.jsonl, 0 workers; "
                     r"losses read every 2 steps\)", out)  # fmt: skip
