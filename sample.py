"""Caption, classify and search images with a trained CoCa, from the command line.

    python sample.py --checkpoint out/tiny/ckpt.pt --image a.png b.png               # captions
    python sample.py --checkpoint … --image a.png --method beam --beams 4            # beam search
    python sample.py --checkpoint … --image a.png --method sample --top-p 0.9        # sampling
    python sample.py --checkpoint … --image a.png --prompt "a small red"             # continue
    python sample.py --checkpoint … --image a.png --classes "a red circle" "a blue square"
    python sample.py --checkpoint … --query "a red circle" --folder images/          # search
"""

import sys

from coca_min.cli import Parser, device_name, file_problem, folder_problem, ranged, text


def parse_args(argv=None):
    """The checked arguments; a wrong one, or a missing file, is one line before torch loads."""
    p = Parser(prog="sample.py", description="Caption, classify and search images with a trained CoCa.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    p.add_argument("--image", nargs="+", default=[], help="image files to caption or classify")
    p.add_argument("--method", choices=["greedy", "beam", "sample"], default="greedy")
    p.add_argument("--beams", type=ranged(int, minimum=1), help="beam search: number of beams (default: 4)")
    p.add_argument("--length-penalty", type=ranged(float), help="beam search: score / length^this (default: 1)")
    p.add_argument("--temperature", type=ranged(float, above=0), help="sampling temperature (default: 1)")
    p.add_argument("--top-k", type=ranged(int, minimum=0), default=None, help="sampling: keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=ranged(float, 0, 1), default=None, help="sampling: nucleus probability")
    p.add_argument("--min-length", type=ranged(int, minimum=0), default=0, help="fewest tokens before [EOS]")
    p.add_argument("--max-length", type=ranged(int, minimum=1), default=None, help="most new tokens")
    p.add_argument("--prompt", type=text, help="text for every caption to continue")
    p.add_argument("--classes", type=text, nargs="+", help="zero-shot: class prompts to choose among")
    p.add_argument("--query", type=text, help="search: rank the images of --folder for this text")
    p.add_argument("--folder", help="search: a folder of images")
    p.add_argument("--top", type=ranged(int, minimum=1), default=5, help="search: how many results to print")
    p.add_argument("--seed", type=ranged(int, minimum=0), default=0)
    p.add_argument("--device", type=device_name, default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, …")
    args = p.parse_args(argv)
    if problem := file_problem(args.checkpoint):
        p.error(f"--checkpoint: {problem}")
    if problem := check_arguments(args):
        p.error(problem)
    for name, default in [("beams", 4), ("length_penalty", 1.0), ("temperature", 1.0), ("prompt", "")]:
        if getattr(args, name) is None:  # not given (given, it was checked against --method above)
            setattr(args, name, default)
    return args


def check_arguments(args):
    """What is wrong with these arguments together or with the files they name; None if nothing."""
    searching, modes = args.query is not None, "--image FILE … (to caption or classify) or --query TEXT --folder DIR (to search)"
    if not searching and not args.image:
        return f"give {modes}"
    if searching and args.image:
        return f"give {modes}, not both"
    if searching and not args.folder:
        return "--query needs --folder DIR, a folder of images to search"
    if not searching and args.folder:
        return "--folder is for --query TEXT (search); to caption or classify, give the files to --image"
    if args.folder and (problem := folder_problem(args.folder)):
        return f"--folder: {problem}"
    for path in args.image:
        if problem := file_problem(path):
            return f"--image: {problem}"
    if args.classes is not None:
        if searching:
            return "--classes is for --image FILE … (zero-shot classification), not for --query"
        if len(args.classes) < 2 or len({c.strip() for c in args.classes}) < len(args.classes):
            return "--classes needs at least two different prompts to choose among"
    for flag, value, method in [("--beams", args.beams, "beam"), ("--length-penalty", args.length_penalty, "beam"),
                                ("--temperature", args.temperature, "sample"), ("--top-k", args.top_k, "sample"),
                                ("--top-p", args.top_p, "sample")]:  # fmt: skip
        if value is not None and (args.method != method or searching or args.classes):
            return f"{flag} is for captioning with --method {method}; it would be ignored here"
    if args.min_length and args.max_length and args.min_length > args.max_length:
        return f"--min-length {args.min_length} is more than --max-length {args.max_length}"
    return None


def main(argv=None):
    args = parse_args(argv)
    import torch  # only now: the arguments and paths are fine

    from coca_min.checkpoint import load_checkpoint
    from coca_min.model.generate import caption

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}, but torch sees no CUDA GPU; use --device cpu")
    try:
        checkpoint = load_checkpoint(args.checkpoint, args.device)
    except (OSError, ValueError) as error:
        sys.exit(f"error: --checkpoint: {error}")
    model, tokenizer = checkpoint["model"], checkpoint["tokenizer"]
    if tokenizer is None:
        sys.exit(f"error: --checkpoint: {args.checkpoint} has no tokenizer (saved without one), so it cannot read or write text")
    size, context = model.config.image_size, model.config.context_length
    for flag, texts in [("--query", [args.query]), ("--classes", args.classes or [])]:
        for t in texts:  # [BOS] … [EOS] must fit, or the text would be cut without a word
            if t is not None and len(tokenizer.encode(t)) > context:
                sys.exit(f"error: {flag} {t[:40]!r}… is {len(tokenizer.encode(t))} tokens; the model reads at most {context}")
    torch.manual_seed(args.seed)

    if args.query is not None:  # the embedding index's code, without writing an index (coca_min/eval/index.py)
        from coca_min.eval import index

        items = index.collection(args.folder)
        embeddings, kept, unreadable = index.embed_files(model, items, args.device)
        if unreadable:
            print(f"warning: skipping {len(unreadable)} of {len(items)} images that cannot be read: "
                  + ", ".join(i["path"] for i in unreadable[:5]) + (" …" if len(unreadable) > 5 else ""), file=sys.stderr)  # fmt: skip
        if not kept:
            sys.exit(f"error: no readable image files ({', '.join(sorted(index.IMAGE_SUFFIXES))}) in {args.folder}")
        with torch.inference_mode():
            text_emb, _ = model.encode_text(tokenizer.encode_batch([args.query], model.config.context_length).to(args.device))
        best, similarity = index.nearest(embeddings, text_emb[0].float().cpu().numpy(), args.top)
        print(f'images ranked for "{args.query}":')
        for rank, (i, cosine) in enumerate(zip(best, similarity), start=1):
            print(f"  {rank}. {kept[i]['path']}  (cosine {cosine:.3f})")
        return

    images = torch.stack([load_image(f, size) for f in args.image]).to(args.device)
    if args.classes:
        with torch.inference_mode():
            image_emb, _ = model.encode_image(images)
            text_emb, _ = model.encode_text(tokenizer.encode_batch(args.classes, model.config.context_length).to(args.device))
            probs = (model.log_logit_scale.exp() * image_emb @ text_emb.T).softmax(dim=-1)
        print("zero-shot: softmax over the given prompts only (shares of 100%, not how well each fits)")
        for path, row in zip(args.image, probs):
            print(f"{path}:")
            for name, prob in sorted(zip(args.classes, row.tolist()), key=lambda x: -x[1]):
                print(f"  {prob:6.1%}  {name}")
        return

    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    try:
        texts = caption(model, tokenizer, images, prompt=args.prompt, method=args.method, num_beams=args.beams,
                        length_penalty=args.length_penalty, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, min_new=args.min_length, max_new=args.max_length, generator=generator)  # fmt: skip
    except ValueError as error:  # a decoding option out of range: say which, no traceback
        sys.exit(f"error: {error}")
    for path, text in zip(args.image, texts):
        print(f"{path}: {text}")


def load_image(path, size, skip=False):
    """An image file -> (3, size, size) normalised tensor; a clear error, or (`skip`) None."""
    from coca_min.data.datasets import preprocess, read_image

    try:
        pixels = read_image(path)
    except Exception as error:
        if skip:
            return None
        sys.exit(f"error: cannot read image {path}: {error}")
    return preprocess(pixels, size)


if __name__ == "__main__":
    main()
