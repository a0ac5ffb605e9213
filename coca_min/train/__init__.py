"""Training CoCa: what `train.py` runs, from a laptop CPU to torchrun on many GPUs.

    trainer.py      the run: set-up, model and its wrapping, the loop, evaluations and saves
    inputs.py       the run's data sets, tokenizer and stream of micro-batches on the device
    step.py         one optimizer step: forward and backward over micro-batches, AdamW; reading the logs
    distributed.py  torch.distributed: the process group, collectives, the all-gather with gradient
    sharding.py     FSDP2 and activation checkpointing; gathered and sharded checkpoints
    state.py        what a checkpoint keeps of a run; saving and resuming it
    report.py       what a run reports: evaluations during training, the final report
    plots.py        the PNGs of a run

Not a part of the paper (its optimizer is §4.1's, left out: see trainer.py). This file imports
nothing, so that `train.py --help` needs no torch.
"""
