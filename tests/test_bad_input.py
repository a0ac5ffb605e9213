"""Bad input gets one clear line: data manifests, train.py and sample.py arguments.

Each surface has one parametrised test. The data cases are either skipped and counted (one
warning naming the file and the line) or, with strict=True, an error naming the same. The
command cases exit non-zero with one line on stderr that names the argument or file, and no
traceback; the argument cases fail before torch is imported (so in milliseconds: no data or
model is loaded), which the probe below checks by looking at sys.modules at exit. The cases
that need torch (a checkpoint to read, data to load) run in this process, to save its import.
"""

import argparse
import io
import json
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from coca_min import PRESETS, CoCa
from coca_min.checkpoint import save_checkpoint
from coca_min.data.image_files import CaptionManifest, CocoCaptions
from coca_min.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
# runs a script as `python SCRIPT ARGS` would, then says on stdout whether torch was imported
PROBE = ("import atexit, runpy, sys; atexit.register(lambda: print('torch imported' if 'torch' in sys.modules "
         "else 'torch not imported')); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")  # fmt: skip


def run_command(script, args, cwd):
    command = [sys.executable, "-c", PROBE, str(ROOT / script), *(a if isinstance(a, bytes) else str(a) for a in args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, errors="backslashreplace", timeout=300)


def run_here(script, args, cwd, monkeypatch, capsys):
    """As run_command, but in this process, for the cases that load torch anyway (saving its
    import, 2 s a case): -> (exit status, stdout, stderr). An exception other than SystemExit
    fails the test with its traceback, as it would end the command with one."""
    monkeypatch.chdir(cwd)
    main = runpy.run_path(str(ROOT / script))["main"]
    try:
        main([str(a) for a in args])
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    if isinstance(status, str):  # sys.exit("message"): Python prints it on stderr, exit status 1
        err, status = err + status + "\n", 1
    return status, out, err


def the_one_error_line(script, args, cwd, after_torch, monkeypatch, capsys):
    """Run a bad command (in this process if it loads torch anyway, else in a new one that must
    not import torch) and assert it fails with one line and no traceback -> that line."""
    if after_torch:
        status, out, err = run_here(script, args, cwd, monkeypatch, capsys)
    else:
        result = run_command(script, args, cwd=cwd)
        status, out, err = result.returncode, result.stdout, result.stderr
        assert out.strip() == "torch not imported"  # so it fails in milliseconds
    lines = err.strip().splitlines()
    assert status != 0 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def png(path, size=32):
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ["a.png", "b.png", "c.png"]:
        png(images / name)
    return images


# ---------------------------------------------------------------- data

def jsonl(tmp_path, lines):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def coco(tmp_path, annotations, images=None):
    images = images or [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


GOOD = b'{"image": "a.png", "caption": "a red square"}'
DATA_CASES = {  # name: (write the file -> path, the loader, what the skip names)
    "jsonl bytes that are not UTF-8": (
        lambda t: jsonl(t, [GOOD, b'{"image": "b.png", "caption": "caf\xe9"}']),
        CaptionManifest, r"1 of 2 rows of .*pairs\.jsonl.*line 2 \(caption has bytes that are not UTF-8\)"),
    "csv bytes that are not UTF-8": (
        lambda t: (t / "pairs.csv").write_bytes(b"image,caption\na.png,a red square\nb.png,caf\xe9\n") and t / "pairs.csv",
        CaptionManifest, r"1 of 2 rows of .*pairs\.csv.*line 3 \(caption has bytes that are not UTF-8\)"),
    "coco bytes that are not UTF-8": (
        lambda t: (t / "c.json").write_bytes(b'{"images": [{"id": 1, "file_name": "a.png"}], "annotations": '
                                             b'[{"image_id": 1, "caption": "red"}, {"image_id": 1, "caption": "caf\xe9"}]}')
        and t / "c.json",
        CocoCaptions, r"1 of 2 annotations of .*c\.json.*annotations\[1\] \(caption has bytes that are not UTF-8\)"),
    "jsonl a line that is not JSON": (
        lambda t: jsonl(t, [GOOD, b'{"image": "b.png", "caption": "a blue', GOOD]),
        CaptionManifest, r"1 of 3 rows of .*pairs\.jsonl.*line 2 \(not JSON: Unterminated string starting at \(column 31\)\)"),
    "jsonl a line that is not an object": (
        lambda t: jsonl(t, [GOOD, b'["b.png", "a blue circle"]']),
        CaptionManifest, r"1 of 2 rows .*line 2 \(expected an object with 'image' and 'caption', got a list\)"),
    "coco an annotation without a caption": (
        lambda t: coco(t, [{"image_id": 1, "caption": "red"}, {"image_id": 2}]),
        CocoCaptions, r"1 of 2 annotations of .*captions\.json.*annotations\[1\] \(no caption\)"),
    "coco an image_id that names no image": (
        lambda t: coco(t, [{"image_id": 1, "caption": "red"}, {"image_id": 99, "caption": "blue"}]),
        CocoCaptions, r"annotations\[1\] \(image_id 99 names no image\)"),
    "coco an image without a file_name": (
        lambda t: coco(t, [{"image_id": 1, "caption": "red"}], [{"id": 1, "file_name": "a.png"}, {"id": 2}]),
        CocoCaptions, r"1 of 2 images of .*captions\.json.*images\[1\] \(no file_name\)"),
    "csv a row without its caption field": (
        lambda t: (t / "pairs.csv").write_text("image,caption\na.png,a red square\nb.png\n") and t / "pairs.csv",
        CaptionManifest, r"1 of 2 rows of .*pairs\.csv.*line 3 \(no caption\)"),
    "csv blank lines before a bad row": (
        lambda t: (t / "pairs.csv").write_text("image,caption\n\nb.png\na.png,a red square\n") and t / "pairs.csv",
        CaptionManifest, r"1 of 2 rows of .*pairs\.csv.*line 3 \(no caption\)"),
    "csv a quote never closed": (
        lambda t: (t / "pairs.csv").write_text('image,caption\na.png,a red square\nb.png,"a blue\nc.png,green\n') and t / "pairs.csv",
        CaptionManifest, r"1 of 2 rows of .*pairs\.csv.*line 3 \(not CSV: unexpected end of data, lines 3-4: a quote not closed\?\)"),
    "csv an unquoted comma in a caption": (
        lambda t: (t / "pairs.csv").write_text("image,caption\na.png,a red square\nb.png,a blue, round thing\n") and t / "pairs.csv",
        CaptionManifest, r"1 of 2 rows of .*pairs\.csv.*line 3 \(3 fields, but the first line names 2 \(quote a caption that has a comma\)\)"),
    "jsonl nested too deeply": (
        lambda t: jsonl(t, [GOOD, b"[" * 100_000]), CaptionManifest, r"line 2 \(not JSON that can be read: nested too deeply\)"),
    "jsonl a null caption": (
        lambda t: jsonl(t, [GOOD, b'{"image": "b.png", "caption": null}']),
        CaptionManifest, r"1 of 2 rows of .*pairs\.jsonl.*line 2 \(no caption\)"),
    "jsonl other field names": (
        lambda t: jsonl(t, [GOOD, b'{"file_name": "b.png", "text": "a blue circle"}']),
        CaptionManifest, r"line 2 \(expected the fields 'image' and 'caption', got \['file_name', 'text'\]\)"),
    "jsonl a caption that is a number": (
        lambda t: jsonl(t, [GOOD, b'{"image": "b.png", "caption": 7}']),
        CaptionManifest, r"line 2 \(caption is not text but an int\)"),
    "jsonl an image that is not a file name": (
        lambda t: jsonl(t, [GOOD, b'{"image": 7, "caption": "a blue circle"}']),
        CaptionManifest, r"line 2 \(image is 7, not a file name\)"),
}


KEPT = {"jsonl a line that is not JSON": ["a red square", "a red square"], "coco bytes that are not UTF-8": ["red"],
        "coco an annotation without a caption": ["red"], "coco an image_id that names no image": ["red"],
        "coco an image without a file_name": ["red"],
        "csv blank lines before a bad row": ["a red square"], "csv a quote never closed": ["a red square"],
        "csv an unquoted comma in a caption": ["a red square"]}  # fmt: skip


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_a_bad_row_is_skipped_and_counted_or_with_strict_an_error(case, tmp_path, folder):
    write, loader, named = DATA_CASES[case]
    kept = KEPT.get(case, ["a red square"])
    path = write(tmp_path)
    with pytest.warns(UserWarning, match=named) as caught:
        data = loader(path, folder, Tokenizer(), 32)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)  # one warning, one line
    assert [c for caps in data.captions for c in caps] == kept  # the good rows, and only they, are kept
    with pytest.raises(ValueError, match=named.replace("1 of", "^1 of")) as error:
        loader(path, folder, Tokenizer(), 32, strict=True)
    assert "\n" not in str(error.value)


def test_an_annotation_of_a_skipped_image_entry_says_so(tmp_path, folder):
    path = coco(tmp_path, [{"image_id": 1, "caption": "red"}, {"image_id": 2, "caption": "blue"}],
                [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": 5}])  # fmt: skip
    with pytest.warns(UserWarning) as caught:
        data = CocoCaptions(path, folder, Tokenizer(), 32)
    assert [str(w.message).split(": ", 1)[1] for w in caught] == [
        "images[1] (file_name is 5, not a file name)", "annotations[1] (its image, images[1], was skipped)"]
    assert data.captions == [["red"]]
    with pytest.raises(ValueError, match=r"^1 of 2 images of .*images\[1\] \(file_name is 5"):
        CocoCaptions(path, folder, Tokenizer(), 32, strict=True)  # the first problem found stops it


def truncated_jpeg(tmp_path, folder):
    whole = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(whole, format="JPEG")
    (folder / "cut.jpg").write_bytes(whole.getvalue()[:-400])  # the end of the scan data is gone
    return jsonl(tmp_path, [GOOD, b'{"image": "cut.jpg", "caption": "a cut file"}'])


def test_a_truncated_jpeg_is_named_at_load_with_strict_and_at_fetch_without(tmp_path, folder):
    path = truncated_jpeg(tmp_path, folder)
    with pytest.raises(ValueError, match=r"1 of 2 images that cannot be read: .*cut\.jpg \(image file is truncated"):
        CaptionManifest(path, folder, Tokenizer(), 32, strict=True)  # every image decoded: found before training
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the quick check (verify) passes it: no warning at load
        data = CaptionManifest(path, folder, Tokenizer(), 32, train=True)
    with pytest.warns(UserWarning, match=r"could not decode .*cut\.jpg \(image file is truncated.*next image instead"):
        items = [data[i] for i in range(len(data))]
    assert all(item is not None for item in items)  # training: the next image took its place


@pytest.mark.parametrize("case, write, named", [
    ("every row bad", lambda t: jsonl(t, [b'{"image": "a.png"}', b"{"]),
     r"pairs\.jsonl: no row has an image and a caption; line 1 \(no caption\); line 2 \(not JSON"),
    ("an empty manifest", lambda t: jsonl(t, [b""]), r"pairs\.jsonl: no row has an image and a caption \(it has no rows\)$"),
    ("a csv header without the columns", lambda t: (t / "p.csv").write_text("file,text\na.png,red\n") and t / "p.csv",
     r"p\.csv: the first line must name the columns 'image' and 'caption'; it has \['file', 'text'\]"),
    ("coco json that is not JSON", lambda t: (t / "c.json").write_text('{"images": [}') and t / "c.json",
     r"c\.json is not JSON \(Expecting value at line 1 column 13\)"),
    ("coco json without its lists", lambda t: (t / "c.json").write_text('{"images": {}}') and t / "c.json",
     r"c\.json: expected COCO caption JSON, an object with lists 'images' and 'annotations'"),
])  # fmt: skip
def test_a_file_with_nothing_usable_is_one_error_naming_it(case, write, named, tmp_path, folder):
    path = write(tmp_path)
    loader = CocoCaptions if path.suffix == ".json" else CaptionManifest
    with pytest.raises(ValueError, match=named) as error:
        loader(path, folder, Tokenizer(), 32)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- train.py

def make_run(out):  # an --out that already holds a run
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"a previous run")
    return out


TRAIN_CASES = [  # (id, arguments (paths relative to tmp_path), words the line must hold)
    ("batch-size 0", ["--batch-size", 0], "argument --batch-size: must be at least 1, got 0"),
    ("batch-size -3", ["--batch-size", -3], "argument --batch-size: must be at least 1, got -3"),
    ("batch-size text", ["--batch-size", "many"], "argument --batch-size: expected an integer, got 'many'"),
    ("batch-size of 400 digits", ["--batch-size", "1" * 401, "--accum", 2], "--batch-size " + "1" * 401 + " must be divisible"),
    ("accum 0", ["--accum", 0], "argument --accum: must be at least 1, got 0"),
    ("lr -1", ["--lr", -1], "argument --lr: must be more than 0, got -1"),
    ("lr nan", ["--lr", "nan"], "argument --lr: expected a finite number, got 'nan'"),
    ("workers -1", ["--workers", -1], "argument --workers: must be at least 0, got -1"),
    ("minutes -1", ["--minutes", -1], "argument --minutes: must be more than 0, got -1"),
    ("eval-every -1", ["--eval-every", -1], "argument --eval-every: must be at least 0, got -1"),
    ("steps -5", ["--steps", -5], "argument --steps: must be at least 1, got -5"),
    ("min-lr-ratio 2", ["--min-lr-ratio", 2], "argument --min-lr-ratio: must be at most 1, got 2"),
    ("vocab-size 100", ["--vocab-size", 100], "argument --vocab-size: must be at least 259, got 100"),
    ("threads 0", ["--threads", 0], "argument --threads: must be at least 1, got 0"),
    ("device gpu", ["--device", "gpu"], "argument --device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("warmup longer than the run", ["--steps", 10, "--warmup", 10], "--warmup 10 must be less than --steps 10"),
    ("steps and minutes", ["--steps", 10, "--minutes", 2], "give --steps (a number of steps) or --minutes"),
    ("both weights 0", ["--caption-weight", 0, "--contrastive-weight", 0], "both 0: nothing would be learned"),
    ("batch not divisible", ["--batch-size", 64, "--accum", 3], "--batch-size 64 must be divisible by processes (1) × --accum (3)"),
    ("out below a file", ["--out", "a_file/run"], "--out: cannot make {tmp}/a_file/run: {tmp}/a_file is a file"),
    ("out is a file", ["--out", "a_file"], "--out: {tmp}/a_file is a file, not a folder"),
    ("resume without a checkpoint", ["--resume", "--out", "empty"], "--resume, but there is no checkpoint at empty/ckpt.pt"),
    ("a run already there", ["--out", "old_run"], "old_run holds a run (old_run/ckpt.pt): continue it with --resume"),
    ("data missing", ["--data", "missing.jsonl", "--images", "images"], "--data: no such file: missing.jsonl"),
    ("data not a manifest", ["--data", "a_file", "--images", "images"], "--data: expected a .jsonl or .csv or .json file, got a_file"),
    ("data without images", ["--data", "pairs.jsonl"], "--data FILE needs --images DIR"),
    ("images not a folder", ["--data", "pairs.jsonl", "--images", "a_file"], "--images: a_file is a file, not a folder"),
    ("val-data missing", ["--data", "pairs.jsonl", "--images", "images", "--val-data", "v.jsonl"], "--val-data: no such file: v.jsonl"),
    ("images with the tiny set", ["--images", "images"], "--images is for --data FILE (a manifest or COCO json), but --data is 'tiny'"),
    ("a size tiny_data cannot feed", ["--size", "base"], "--size base takes 288 px images, but tiny_data's are 48 px"),
    ("vocab-size with the tiny set", ["--vocab-size", 300], "--vocab-size is for --data FILE"),
    ("strict with the tiny set", ["--strict"], "--strict is for --data FILE"),
    ("batch-size 1", ["--batch-size", 1], "--batch-size 1: the contrastive loss needs at least 2 pairs per step"),
    ("out empty", ["--out", ""], "--out is empty: give a folder"),
    ("resume and overwrite", ["--resume", "--overwrite", "--out", "old_run"], "give --resume (continue the run in --out) or --overwrite"),
    ("fsdp without torchrun", ["--fsdp"], "--fsdp shards the model over processes: launch with torchrun --nproc-per-node N"),
    ("a sharded run resumed in one process", ["--resume", "--out", "fsdp_run"],
     "fsdp_run is a run with --fsdp: resume it under torchrun --nproc-per-node N (N >= 2), or give --no-fsdp"),
    ("a folder without shards", ["--data", "empty"], "--data: empty is a folder without .tar shards (write them with"),
    ("strict with shards", ["--data", "shards", "--strict"], "--strict is for a manifest or COCO json; from shards"),
    ("recombine with shards", ["--data", "shards", "--recombine"], "--recombine is for the tiny set (--data tiny)"),
    ("val-data with shards, no images", ["--data", "shards", "--val-data", "pairs.jsonl"], "--val-data needs --images DIR"),
]
TRAIN_CASES_AFTER_TORCH = [  # these need torch (a checkpoint to read, a GPU to look for) or the data
    ("resume a file that is not a checkpoint", ["--resume", "--out", "old_run"],
     "error: --resume: old_run/ckpt.pt is not a coca_min checkpoint (not a file that torch.save wrote)"),
    ("device cuda:99", ["--device", "cuda:99", "--steps", 1], "error: --device cuda:99, but torch sees"),
    ("every row of the manifest bad", ["--data", "bad.jsonl", "--images", "images", "--steps", 1],
     "error: bad.jsonl: no row has an image and a caption; line 1 (no caption)"),
]


@pytest.mark.parametrize("case, args, words", TRAIN_CASES + TRAIN_CASES_AFTER_TORCH,
                         ids=[c[0] for c in TRAIN_CASES + TRAIN_CASES_AFTER_TORCH])  # fmt: skip
def test_train_py_bad_input_is_one_line(case, args, words, tmp_path, folder, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "pairs.jsonl").write_bytes(GOOD + b"\n")
    (tmp_path / "bad.jsonl").write_bytes(b'{"image": "a.png"}\n')
    (tmp_path / "empty").mkdir()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "000000.tar").write_bytes(b"")
    make_run(tmp_path / "old_run")
    make_run(tmp_path / "fsdp_run")
    (tmp_path / "fsdp_run" / "args.json").write_text(json.dumps({"fsdp": True, "checkpoint": "sharded"}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    after_torch = case in [c[0] for c in TRAIN_CASES_AFTER_TORCH]
    line = the_one_error_line("train.py", args, tmp_path, after_torch, monkeypatch, capsys)
    assert words.format(tmp=tmp_path) in line, line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
    assert (tmp_path / "old_run" / "ckpt.pt").read_bytes() == b"a previous run"  # nothing lost


# ---------------------------------------------------------------- sample.py

@pytest.fixture
def sample_files(tmp_path, folder):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt.pt", CoCa(PRESETS["tiny"]), Tokenizer())
    (tmp_path / "text.pt").write_text("this is not a checkpoint")
    torch.save({"model": {}, "config": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pt")
    torch.save(CoCa(PRESETS["tiny"]).state_dict(), tmp_path / "bare.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    saved["config"]["vision_width"] = "wide"
    torch.save(saved, tmp_path / "odd_config.pt")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return tmp_path


SAMPLE_CASES = [  # (id, arguments, words the line must hold)
    ("checkpoint missing", ["--checkpoint", "missing.pt", "--image", "images/a.png"], "--checkpoint: no such file: missing.pt"),
    ("image missing", ["--checkpoint", "ckpt.pt", "--image", "images/none.png"], "--image: no such file: images/none.png"),
    ("beams 0", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--beams", 0], "argument --beams: must be at least 1, got 0"),
    ("top-p 2", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--top-p", 2], "argument --top-p: must be at most 1, got 2"),
    ("temperature 0", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--temperature", 0],
     "argument --temperature: must be more than 0, got 0"),
    ("top 0", ["--checkpoint", "ckpt.pt", "--query", "red", "--folder", "images", "--top", 0], "argument --top: must be at least 1"),
    ("query without folder", ["--checkpoint", "ckpt.pt", "--query", "red"], "--query needs --folder DIR"),
    ("folder missing", ["--checkpoint", "ckpt.pt", "--query", "red", "--folder", "nowhere"], "--folder: no such folder: nowhere"),
    ("image and query", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--query", "red", "--folder", "images"], "not both"),
    ("nothing to do", ["--checkpoint", "ckpt.pt"], "give --image FILE"),
    ("query empty", ["--checkpoint", "ckpt.pt", "--query", " ", "--folder", "images"], "argument --query: is empty"),
    ("query not UTF-8", ["--checkpoint", "ckpt.pt", "--query", b"caf\xe9", "--folder", "images"],
     "argument --query: 'caf\\udce9' has bytes that are not UTF-8"),
    ("an empty class", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--classes", "red", ""], "argument --classes: is empty"),
    ("one class", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--classes", "a red circle"],
     "--classes needs at least two different prompts"),
    ("a class twice", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--classes", "red", "red "],
     "--classes needs at least two different prompts"),
    ("beams without beam search", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--beams", 3],
     "--beams is for captioning with --method beam; it would be ignored here"),
    ("top-p with beam search", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--method", "beam", "--top-p", 0.9],
     "--top-p is for captioning with --method sample"),
    ("folder without query", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--folder", "images"],
     "--folder is for --query TEXT (search)"),
    ("min above max", ["--checkpoint", "ckpt.pt", "--image", "images/a.png", "--min-length", 5, "--max-length", 2],
     "--min-length 5 is more than --max-length 2"),
]
SAMPLE_CASES_AFTER_TORCH = [
    ("not a checkpoint", ["--checkpoint", "text.pt", "--image", "images/a.png"],
     "error: --checkpoint: text.pt is not a coca_min checkpoint (not a file that torch.save wrote)"),
    ("objects weights_only refuses", ["--checkpoint", "pickled.pt", "--image", "images/a.png"],
     "error: --checkpoint: pickled.pt holds Python objects besides tensors and plain data, which are not loaded, for safety"),
    ("a bare state_dict", ["--checkpoint", "bare.pt", "--image", "images/a.png"],
     f"error: --checkpoint: bare.pt is a bare state_dict ({len(CoCa(PRESETS['tiny']).state_dict())} tensors), not a "
     "coca_min checkpoint: it has no config"),
    ("image unreadable", ["--checkpoint", "ckpt.pt", "--image", "images/broken.png"], "error: cannot read image images/broken.png"),
    ("an image as checkpoint", ["--checkpoint", "images/a.png", "--image", "images/a.png"],
     "error: --checkpoint: images/a.png is not a coca_min checkpoint (not a file that torch.save wrote)"),
    ("a query longer than the context", ["--checkpoint", "ckpt.pt", "--query", "a red circle " * 20, "--folder", "images"],
     "error: --query 'a red circle a red circle a red circle a'… is 262 tokens; the model reads at most 32"),
    ("a config of the wrong types", ["--checkpoint", "odd_config.pt", "--image", "images/a.png"],
     "error: --checkpoint: odd_config.pt: its config's vision_width is 'wide', not an int"),
]


@pytest.mark.parametrize("case, args, words", SAMPLE_CASES + SAMPLE_CASES_AFTER_TORCH,
                         ids=[c[0] for c in SAMPLE_CASES + SAMPLE_CASES_AFTER_TORCH])  # fmt: skip
def test_sample_py_bad_input_is_one_line(case, args, words, sample_files, monkeypatch, capsys):
    after_torch = case in [c[0] for c in SAMPLE_CASES_AFTER_TORCH]
    line = the_one_error_line("sample.py", args, sample_files, after_torch, monkeypatch, capsys)
    assert words in line, line


def test_help_states_every_default_once(capsys):
    import train

    with pytest.raises(SystemExit) as done:
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert done.value.code == 0
    assert "--seed SEED seed of the model, data order and crops (default: 0)" in text  # a default of 0 is shown
    assert "--eval-every EVAL_EVERY evaluate and save every N steps" in text and "(default: 0)" in text
    assert "(default: False)" not in text and "(default: None)" not in text  # switches and unset values are not


def test_under_torchrun_only_the_first_process_of_a_machine_prints_an_argument_error(tmp_path):
    for local_rank, printed in [("0", True), ("1", False)]:
        environment = {**os.environ, "RANK": local_rank, "LOCAL_RANK": local_rank, "WORLD_SIZE": "2"}
        command = [sys.executable, str(ROOT / "train.py"), "--lr", "-1"]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=60)
        assert result.returncode == 2 and ("argument --lr: must be more than 0" in result.stderr) == printed
        assert printed or result.stderr == ""  # the others exit with the same status, silently
