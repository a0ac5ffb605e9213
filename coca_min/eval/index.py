"""An embedding index: a collection's image embeddings, computed once, searched by text or image.

Not a part of the paper, which retrieves over fixed benchmarks (§4.2); it is how people use a
CoCa's contrastive embeddings on their own images. `build` embeds every image of a folder (or
of a manifest's rows) with the image encoder and attentional pooler, in batches, and writes
INDEX_DIR/

- `embeddings.npy`: (N, E) float32, each row unit norm (`CoCa.encode_image`);
- `items.jsonl`: one line per row, {"row", "path", "caption"} (caption: the manifest's, or null);
- `meta.json`: the checkpoint, hashes of its config and of its weights, E, N, the files skipped.

Each batch is saved as it is done (`INDEX_DIR/parts/`), so an interrupted build resumes where
it stopped, and a later build over a grown folder embeds only the new files. A file that does not
decode is skipped and counted. `query` ranks the rows by exact cosine similarity (one matrix
product in numpy) and refuses an index built with another checkpoint.

    python -m coca_min.eval.index build --checkpoint out/tiny/ckpt.pt --images my_images/ --out my_index/
    python -m coca_min.eval.index query my_index/ --text "a red circle" -k 5    # --checkpoint: the index's own

Left out: approximate search (for millions of rows, load `embeddings.npy` into a vector
database or a nearest-neighbour library), and text embeddings in the index.
"""

import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MANIFESTS = (".jsonl", ".csv")


def config_hash(config) -> str:
    """16 hex digits naming a model config (what makes embeddings comparable)."""
    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(model) -> str:
    """16 hex digits naming trained weights: a hash of every tensor's shape and first 256 values
    (cheap even for a 2B model; two runs, or two steps of one, differ)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def collection(source) -> list[dict]:
    """[{"path", "caption"}] of a folder's image files (sorted, captions None) or of a JSONL/CSV
    manifest's rows (paths relative to the manifest's folder; one item per image)."""
    source = Path(source)
    if source.is_dir():
        return [{"path": str(p), "caption": None} for p in sorted(source.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if source.suffix.lower() not in MANIFESTS:
        raise ValueError(f"{source} is neither a folder of images nor a .jsonl or .csv manifest")
    from coca_min.data.image_files import CaptionManifest

    data = CaptionManifest(source, source.parent, tokenizer=None, image_size=1)
    return [{"path": str(path), "caption": captions[0]} for path, captions in zip(data.paths, data.captions)]


def _parts(out):
    """The saved batches, in order: [(embeddings (b, E), items)] of every part whose items were written."""
    parts = []
    for items_file in sorted((out / "parts").glob("*.jsonl")):
        rows = [json.loads(line) for line in items_file.read_text().splitlines()]
        parts.append((np.load(items_file.with_suffix(".npy")), rows))
    return parts


def _write_atomic(path, write):
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _save_array(path, array):
    with open(path, "wb") as file:  # a file, not a name: np.save would add ".npy" to "x.npy.tmp"
        np.save(file, array)


def build(checkpoint, source, out, batch_size=64, device="cpu", progress=True) -> dict:
    """Embed the images of `source` not yet in the index at `out`; -> meta.json's contents."""
    from tqdm import tqdm

    from coca_min.checkpoint import load_checkpoint

    out = Path(out)
    model = load_checkpoint(checkpoint, device)["model"]
    meta = {"checkpoint": str(Path(checkpoint).resolve()), "config_hash": config_hash(model.config),
            "weights": fingerprint(model), "embedding_dim": model.config.embed_dim}  # fmt: skip
    if (out / "meta.json").is_file():
        refuse_another_model(out, meta["weights"], checkpoint)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    if (out / "parts" / "meta.json").is_file():  # an interrupted build's model: its parts must not mix with another's
        refuse_another_model(out / "parts", meta["weights"], checkpoint, what=f"the interrupted build in {out}")
    _write_atomic(out / "parts" / "meta.json", lambda p: p.write_text(json.dumps(meta) + "\n"))
    if (out / "embeddings.npy").is_file() and not any((out / "parts").glob("*.npy")):  # a finished index: its rows are part 0
        np.save(out / "parts" / "000000.npy", np.load(out / "embeddings.npy"))
        (out / "parts" / "000000.jsonl").write_text((out / "items.jsonl").read_text())
    parts = _parts(out)
    done = {row["path"] for _, rows in parts for row in rows}
    skipped = set(json.loads((out / "meta.json").read_text())["skipped"]) if (out / "meta.json").is_file() else set()
    if (out / "skipped.json").is_file():  # an interrupted build's
        skipped |= set(json.loads((out / "skipped.json").read_text()))
    todo = [item for item in collection(source) if item["path"] not in done and item["path"] not in skipped]
    bar = tqdm(total=len(todo), desc="embedding images", unit="image", disable=not progress or None)
    for start in range(0, len(todo), batch_size):
        embeddings, batch, broken = embed_files(model, todo[start : start + batch_size], device)
        skipped |= {item["path"] for item in broken}
        if batch:
            name = out / "parts" / f"{len(parts):06d}"
            _write_atomic(name.with_suffix(".npy"), lambda p: _save_array(p, embeddings))
            _write_atomic(name.with_suffix(".jsonl"), lambda p: p.write_text("".join(json.dumps(i) + "\n" for i in batch)))
            parts.append((embeddings, batch))  # saved: an interrupted build resumes after it
        _write_atomic(out / "skipped.json", lambda p: p.write_text(json.dumps(sorted(skipped))))
        bar.update(len(todo[start : start + batch_size]))
    bar.close()
    return _finish(out, parts, {**meta, "skipped": sorted(skipped)})


def embed_files(model, items, device="cpu"):
    """-> (embeddings (n, E) float32 of the items' images that decode, those items, the others)."""
    import torch

    loaded = [(item, _load(item["path"], model.config.image_size)) for item in items]
    kept = [(item, image) for item, image in loaded if image is not None]
    broken = [item for item, image in loaded if image is None]
    if not kept:
        return np.zeros((0, model.config.embed_dim), np.float32), [], broken
    with torch.inference_mode():
        embeddings = model.encode_image(torch.stack([image for _, image in kept]).to(device))[0]  # (n, E)
    return embeddings.float().cpu().numpy(), [item for item, _ in kept], broken


def nearest(embeddings, query_embedding, k=10):
    """(indices of the k rows nearest to the query by cosine, best first; their similarities).
    embeddings (N, E) and query (E,) unit norm: the cosine is their dot product."""
    similarity = embeddings @ np.asarray(query_embedding, dtype=np.float32)  # (N,)
    best = np.argsort(-similarity, kind="stable")[:k]
    return best, similarity[best]


def _finish(out, parts, meta) -> dict:
    embeddings = np.concatenate([e for e, _ in parts]) if parts else np.zeros((0, meta["embedding_dim"]), np.float32)
    items = [{"row": row, **item} for row, item in enumerate(item for _, rows in parts for item in rows)]
    _write_atomic(out / "embeddings.npy", lambda p: _save_array(p, embeddings.astype(np.float32)))
    _write_atomic(out / "items.jsonl", lambda p: p.write_text("".join(json.dumps(i) + "\n" for i in items)))
    meta = {**meta, "rows": len(items)}
    _write_atomic(out / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    for part in (out / "parts").iterdir():
        part.unlink()
    (out / "parts").rmdir()
    (out / "skipped.json").unlink(missing_ok=True)
    return meta


def _load(path, size):
    """(3, size, size) normalised pixels of an image file, or None if it does not decode."""
    from coca_min.data.datasets import preprocess, read_image

    try:
        pixels = read_image(path)
    except Exception:
        return None
    return preprocess(pixels, size)


def refuse_another_model(index, weights, checkpoint, what=None):
    """A ValueError unless the index at `index` was built with these weights (`fingerprint`)."""
    meta = json.loads((Path(index) / "meta.json").read_text())
    if meta["weights"] != weights:
        raise ValueError(f"{what or index} was built with {meta['checkpoint']} (weights {meta['weights']}), not with "
                         f"{checkpoint} (weights {weights}): their embeddings are not comparable; build another index")  # fmt: skip


def search(index, query_embedding, k=10) -> list[tuple[float, dict]]:
    """The k rows nearest to a unit-norm (E,) embedding by cosine: [(similarity, item)], best first."""
    index = Path(index)
    embeddings = np.load(index / "embeddings.npy")  # (N, E)
    items = [json.loads(line) for line in (index / "items.jsonl").read_text().splitlines()]
    best, similarity = nearest(embeddings, query_embedding, k)
    return [(float(s), items[i]) for i, s in zip(best, similarity)]


def query(index, checkpoint=None, text=None, image=None, k=10, device="cpu"):
    """Search the index by a text or an image file, embedded by `checkpoint` (default: the one
    named in its meta.json), which must hold the weights it was built with."""
    import torch

    from coca_min.checkpoint import load_checkpoint

    if not (Path(index) / "meta.json").is_file() and (Path(index) / "parts").is_dir():
        raise FileNotFoundError(f"{index}: its build was interrupted; run the same build command again to finish it")
    if not (Path(index) / "meta.json").is_file():
        raise FileNotFoundError(f"{index} is not an index (no meta.json): make one with python -m coca_min.eval.index build")
    checkpoint = checkpoint or json.loads((Path(index) / "meta.json").read_text())["checkpoint"]
    loaded = load_checkpoint(checkpoint, device)
    model, tokenizer = loaded["model"], loaded["tokenizer"]
    refuse_another_model(index, fingerprint(model), checkpoint)
    with torch.inference_mode():
        if text is not None:
            embedding = model.encode_text(tokenizer.encode_batch([text], model.config.context_length).to(device))[0]
        else:
            pixels = _load(image, model.config.image_size)
            if pixels is None:
                raise ValueError(f"cannot read image {image}")
            embedding = model.encode_image(pixels[None].to(device))[0]
    return search(index, embedding[0].float().cpu().numpy(), k)


def main(argv=None):
    from coca_min.cli import Parser, ranged

    parser = Parser(prog="python -m coca_min.eval.index", description="build or search an embedding index of images")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="embed a folder of images or a manifest's (resumable)")
    make.add_argument("--checkpoint", required=True, help="the model that embeds the images (a train.py checkpoint)")
    make.add_argument("--images", required=True, help="a folder of images, or a .jsonl/.csv manifest")
    make.add_argument("--out", required=True, help="the index folder")
    make.add_argument("--batch-size", type=ranged(int, minimum=1), default=64, help="images per batch (default: 64)")
    find = commands.add_parser("query", help="the nearest images to a text or an image")
    find.add_argument("index")
    find.add_argument("--checkpoint", help="the model that embeds the query (default: the index's own, from meta.json)")
    what = find.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="search by this text")
    what.add_argument("--image", help="search by this image file")
    find.add_argument("-k", type=ranged(int, minimum=1), default=10, help="how many rows to show (default: 10)")
    args = parser.parse_args(argv)
    if args.command == "build" and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file; the index is a folder")
    try:
        if args.command == "build":
            meta = build(args.checkpoint, args.images, args.out, args.batch_size)
            print(f"{args.out}: {meta['rows']} images embedded ({meta['embedding_dim']} numbers each), "
                  f"{len(meta['skipped'])} skipped (do not decode)")  # fmt: skip
        else:
            for place, (similarity, item) in enumerate(query(args.index, args.checkpoint, args.text, args.image, args.k), 1):
                caption = f"  {item['caption']!r}" if item.get("caption") else ""
                print(f"{place:3d}. {similarity:.3f}  {item['path']}{caption}")
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        if args.command == "build":  # every finished batch is saved in OUT/parts/
            sys.exit(f"\ninterrupted: the batches embedded so far are saved in {args.out}/parts/; run the same command again to continue")
        sys.exit(130)


if __name__ == "__main__":
    main()
