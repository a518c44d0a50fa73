"""Distribution over replicas: the strategy, the chief, and the split of a global batch.

Under `MirroredStrategy` and `MultiWorkerMirroredStrategy` every replica
takes an equal slice of the *global* batch (`distribute_batch`). The
trainer divides each replica's summed pixel losses by the pixel count of
the whole global batch (`sum_over_replicas`) and its weight decay by the
number of replicas, so the gradients that the Keras optimizer sums over
replicas equal the one-device gradient of the same global batch
(tests/training/test_distribute.py checks it on two logical CPUs). E-steps
are per example, so splitting a batch does not change its targets
(EM-Adapt's random visiting order and dropout masks are drawn per replica,
from stateless seeds of (run seed, step, replica id): `trainer.step_seeds`).
Every worker runs the same seeded input
pipeline and keeps its replicas' slices, so a global batch does not depend
on the number of workers, at the price of each worker decoding the whole
global batch.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from kseg.constants import STRATEGIES


def make_strategy(name: str | None = None) -> tf.distribute.Strategy:
    """The distribution strategy called `name` (one of STRATEGIES).

    None picks "mirrored" when more than one GPU is visible, else "default"
    (one device). "multi_worker" reads the cluster from the TF_CONFIG
    environment variable and must be created before TensorFlow runs any op.
    """
    if name is None:
        name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                             '"task": {"type": "worker", "index": 0}})')
        try:
            json.loads(config)["cluster"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"TF_CONFIG is not JSON with a 'cluster' entry: {config!r}") from e
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES} or None, got {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and evaluations:
    always for one worker; under multi-worker the `chief` task, or worker 0
    when the cluster has no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def distribute_batch(strategy: tf.distribute.Strategy, batch: dict):
    """Splits a global batch along its first axis into equal per-replica slices.

    Replica r of N (numbered over all workers) gets rows [r B/N, (r+1) B/N).
    Returns `batch` itself for one replica, else a PerReplica structure for
    `strategy.run`.
    """
    num = strategy.num_replicas_in_sync
    if num == 1:
        return batch

    def replica_slice(context):
        def cut(t):
            size = tf.shape(t)[0] // num
            return t[context.replica_id_in_sync_group * size:
                     (context.replica_id_in_sync_group + 1) * size]
        return tf.nest.map_structure(cut, batch)
    return strategy.experimental_distribute_values_from_function(replica_slice)


def check_batch_splits(dataset: tf.data.Dataset, num_replicas: int) -> None:
    """Raises ValueError when the dataset's global batch does not split evenly."""
    size = dataset.element_spec["image"].shape[0]
    if num_replicas > 1 and size is not None and size % num_replicas:
        raise ValueError(f"the global batch of {size} images does not split evenly over "
                         f"{num_replicas} replicas: make --batch_size (or --strong_per_batch "
                         f"+ --weak_per_batch) a multiple of {num_replicas}")


def sum_over_replicas(value: tf.Tensor) -> tf.Tensor:
    """`value` summed over the replicas in sync (itself outside a replica context)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def num_replicas() -> int:
    """Replicas in sync in the current replica context (1 outside one)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync
