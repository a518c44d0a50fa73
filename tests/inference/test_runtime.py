"""kseg/inference/runtime.py: oneDNN's frozen-weights setting for inference-only processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kseg.inference import runtime

# A tiny network's outputs at two image sizes, traced (as kseg's inference runs) and
# eagerly, the first call after the weights are set; the first size again last.
_FORWARD = """
import json, sys
import numpy as np, keras, tensorflow as tf
from kseg import model
from kseg.config import ModelConfig
keras.utils.set_random_seed(0)
net = model.build_deeplab(ModelConfig(num_classes=3, width=0.0625))
forward = tf.function(lambda x: net(x, training=False))  # as kseg.inference.segment
out = {}
for size in (33, 49, 33):
    x = np.random.default_rng(size).normal(0, 50, (1, size, size, 3)).astype("float32")
    out[f"traced {size}"] = forward(x).numpy().tolist()
    out[f"eager {size}"] = net(x, training=False).numpy().tolist()
print("@@" + json.dumps(out))
"""


def _forward_outputs(frozen: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **{runtime.FROZEN_WEIGHTS_ENV: frozen})
    run = subprocess.run([sys.executable, "-c", _FORWARD], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    line = [l for l in run.stdout.splitlines() if l.startswith("@@")][0]
    return {size: np.array(v) for size, v in json.loads(line[2:]).items()}


def test_sets_the_variable_unless_the_user_did():
    environ = {}
    assert runtime.assume_frozen_weights(environ)
    assert environ == {runtime.FROZEN_WEIGHTS_ENV: "1"}
    user = {runtime.FROZEN_WEIGHTS_ENV: "0"}
    assert not runtime.assume_frozen_weights(user)
    assert user == {runtime.FROZEN_WEIGHTS_ENV: "0"}


@pytest.mark.slow  # two fresh TensorFlow processes
def test_frozen_kernels_give_the_same_outputs_at_every_image_size():
    """The cached kernels are reused across calls of other input sizes: same outputs."""
    plain, frozen = _forward_outputs("0"), _forward_outputs("1")
    assert set(plain) == set(frozen) == {f"{how} {size}" for how in ("traced", "eager")
                                         for size in (33, 49)}
    for size in plain:
        np.testing.assert_allclose(frozen[size], plain[size], rtol=1e-5, atol=1e-5)
