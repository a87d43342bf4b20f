"""The training library that train.py, eval.py, predict.py, bench.py and ablate.py share.

Leaf modules, each importable on its own (this package imports none of them):

- ``cli``: user errors as one line and exit status 2; argparse value types
- ``files``: atomic writes
- ``distributed``: devices, torchrun process groups, main-process logging
- ``precision``: mixed precision (bf16, or fp16 with a gradient scaler)
- ``metrics``: the metric table (loss, top-1, top-5) and the evaluation of a split
- ``checkpoint``: the checkpoint format and the way from a checkpoint to a ready model
- ``plots``: history files, accuracy and loss curves, confusion matrices
- ``optim``: the optimizer and learning-rate schedule tables
- ``options``: train.py's flags, the presets and what must match on --resume
- ``engine``: a run's state, one training epoch, interruption, compilation
"""
