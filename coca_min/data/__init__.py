"""Image-caption data for CoCa: the tokenizer, data sets, tar shards and the training streams.

    tokenizer.py    byte-level BPE; ids 0/1/2 are [PAD]/[BOS]/[EOS]
    datasets.py     image preprocessing, batching, the tiny set (`TinyShapes`)
    image_files.py  image folders with a JSONL/CSV manifest, COCO caption JSON
    shards.py       tar shards (the WebDataset layout), written and streamed; its own command
    loader.py       the endless, resumable streams of training batches
    synthetic/      the generators of tiny_data/ (shapes) and of tiny clips (moving shapes)

Not a part of the paper. Nothing here imports the model (`coca_min.model`) or training
(`coca_min.train`). This file imports nothing, so that `train.py --help` needs no torch.
"""
