"""The settings of a run: small frozen dataclasses, the only home of their defaults.

An `Experiment` holds one config per concern (data, model, input, E-step,
optimiser, loop). The defaults are the paper's settings; the flagfiles in
`flags/` change what the embedded demo needs. Training writes the
experiment to `model_dir/config.json`, from which evaluation, export and
prediction rebuild the network.

This module imports no TensorFlow, so the command-line layer can build its
flags from these classes in processes that never run a network.
"""

from __future__ import annotations

import dataclasses

from kseg.constants import FOVS, IMAGE_LABEL_SOURCES, STRIDE


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which records train and validate, and how examples are supervised.

    `supervision` is the kind of every training example, or, when
    `num_strong` >= 0, of the weak part: the first `num_strong` images of a
    seeded permutation of the training list are strong, the rest weak, and
    each batch holds `strong_per_batch` + `weak_per_batch` of them.
    """

    dataset: str = "embedded"  # "embedded" or "embedded_coco" when data_dir is None
    data_dir: str | None = None  # prepared records; None: `dataset`, made on first use
    train_split: str = "train"
    weak_split: str | None = None  # records of the --supervision examples (default train_split)
    val_split: str = "val"
    supervision: str = "strong"
    batch_size: int = 20
    num_strong: int = -1
    strong_per_batch: int = 10
    weak_per_batch: int = 10
    # Cross-Joint: a second dataset trained in the same batches. The model's
    # labels are then the joint dataset's; this dataset's labels map into
    # them by class name (VOC names through kseg.data.coco.VOC_TO_COCO) and
    # its examples' loss runs over their own labels only.
    joint: "DataConfig | None" = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What defines the network. `width` scales every channel count."""

    num_classes: int = 21
    fov: str = "large"
    width: float = 1.0
    dropout: float = 0.5

    def __post_init__(self):
        if self.fov not in FOVS:
            raise ValueError(f"fov must be one of {sorted(FOVS)}, got {self.fov!r}")
        if not 0 < self.width <= 1:
            raise ValueError(f"width must be in (0, 1], got {self.width}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Augmentation and decoding settings of the training input."""

    num_classes: int
    crop_size: int = 321
    flip: bool = True
    image_labels_from: str = "image"  # "image" (the paper) or "crop" (released code).
    shuffle_buffer: int = 1000
    seed: int | None = None

    def __post_init__(self):
        if self.image_labels_from not in IMAGE_LABEL_SOURCES:
            raise ValueError("image_labels_from must be 'image' or 'crop', "
                             f"got {self.image_labels_from!r}")
        if self.crop_size < STRIDE:
            raise ValueError(f"crop_size must be >= {STRIDE}, got {self.crop_size}")


@dataclasses.dataclass(frozen=True)
class EStepConfig:
    """E-step hyper-parameters (paper values as defaults, docs/method.md)."""

    fg_bias: float = 5.0
    bg_bias: float = 3.0
    fg_portion: float = 0.2
    bg_portion: float = 0.4
    adapt_iters: int = 5
    adapt_margin: float = 1e-5
    bbox_outside: str = "background"  # or "soft": the released code's variant.
    # Steps at the start during which Bbox-EM-Fixed fills its boxes (as
    # Bbox-Rect does) instead of trusting the network. 0 = the paper, which
    # starts from ImageNet weights; from random init the network first learns
    # "background everywhere" and EM then never recovers the objects.
    box_warmup_steps: int = 0


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings (paper values as defaults, docs/training.md)."""

    optimizer: str = "sgd"  # or "adam": not the paper's, for short runs from random init
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay_steps: int = 2000  # multiply the rate by lr_decay every this many steps
    lr_decay: float = 0.1
    classifier_lr_mult: float = 10.0  # fc8 weights; its bias gets twice this
    bias_lr_mult: float = 2.0  # every other bias


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to log, checkpoint and evaluate.

    `checkpoint_input`: also checkpoint the input iterator (shuffle buffer,
    prefetched batches, random state), so a resumed run sees exactly the
    batches an uninterrupted one would. It costs disk: a checkpoint of the
    embedded configs (flags/strong.cfg: batch 10, 129 crops, shuffle buffer
    1000, width-0.125 network with Adam) is 17 MB with it, 3.7 MB without;
    on VOC it adds roughly the encoded size of `shuffle_buffer` images plus a
    few decoded batches (~100-150 MB). Without it a resumed run restarts the
    data order from the seed.
    """

    model_dir: str
    num_steps: int = 6000
    steps_per_epoch: int = 500  # val evaluation once per epoch
    log_every: int = 20
    image_every: int = 500  # TensorBoard image panels (0: never)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    checkpoint_input: bool = True


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A whole run: one config per concern, the initialisation and the seed."""

    data: DataConfig
    model: ModelConfig
    input: InputConfig
    estep: EStepConfig
    optim: OptimConfig
    loop: LoopConfig
    init: str = "random"
    init_from: str | None = None  # a run directory to start from (Cross-Pretrain)
    reset_classifier: bool = False  # with init_from: a fresh fc8
    seed: int = 0
