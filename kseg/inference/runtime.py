"""How a process that only runs inference sets TensorFlow up: oneDNN keeps each
convolution's kernel in its own layout between calls.

On x86 CPUs TensorFlow runs convolutions through oneDNN, which wants each
kernel in a blocked memory layout of its own and, by default, reorders the
kernel from TensorFlow's HWIO layout on every call, because a variable may
have changed since the last one. For DeepLab-VGG16 (20.5M parameters) that
is a third of a batch-1 forward pass at 321x321 in float32 (BENCHMARKS.md:
0.45 s -> 0.31 s on the 2-core machine). With TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1
each convolution op reorders its kernel once, on its first call, and reuses
it after: right where the weights are fixed before the first call (the
evaluation, prediction and CRF-search commands restore one checkpoint, then
run), wrong where they change after it (training, or a network evaluated
during training): an op that already ran keeps the old kernel (measured:
halving every weight after a first call left the same traced function's
output unchanged). A new trace makes new ops, which read the weights again.

TensorFlow reads the variable once per process, before the first
convolution, so it is set at the start of a command (`assume_frozen_weights`),
never in the library's functions, which a training process also calls; the
training command never sets it. A user's own setting wins (=0 turns it off).
"""

from __future__ import annotations

import os
from typing import MutableMapping

FROZEN_WEIGHTS_ENV = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"


def assume_frozen_weights(environ: MutableMapping[str, str] | None = None) -> bool:
    """Sets TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 in `environ` (default os.environ),
    unless the user set it. For the start of an inference-only process (see the
    module docstring); returns whether it set it."""
    environ = os.environ if environ is None else environ
    if FROZEN_WEIGHTS_ENV in environ:
        return False
    environ[FROZEN_WEIGHTS_ENV] = "1"
    return True
