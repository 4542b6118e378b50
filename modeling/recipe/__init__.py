"""The trainer in phases, in the manner of torchtune's recipes; `modeling.train.train` calls them in order.

    setup       config, version index, run directory, accelerator and seeds, processor
    model       the model and which of its parts train
    optimizer   AdamW per part, warmup then cosine
    data        the train loader (its position checkpointed) and the validation rows
    step        one optimizer step over grad_accum micro-batches
    checkpoint  exact-resume state (model, optimizer, scheduler, RNG, data position), the final checkpoint
    loop        steps, logging, validation, checkpoints and early stops
    evaluate    scores during and after training; record: metrics.jsonl and the catalog entry
"""
