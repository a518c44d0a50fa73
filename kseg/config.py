"""The settings of a run: small frozen dataclasses, the only home of their defaults.

An `Experiment` holds one config per concern (data, model, input, E-step,
optimiser, loop). The defaults are the paper's settings; the flagfiles in
`flags/` change what the embedded demo needs. Training writes the
experiment to `model_dir/config.json`, from which evaluation, export and
prediction rebuild the network.

Every setting a user may change is a field declared with `setting(default,
help)`: the command line (kseg.cli.flags) defines one absl flag per such
field, named after it, with its default and help, so a new setting is added
here and nowhere else (docs/configuration.md shows an example). A field
declared without `setting` has no flag of its own: `InputConfig.num_classes`
and `InputConfig.seed` take the values of --num_classes and --seed.

This module imports no TensorFlow, so the command line can build its flags
in processes that never run a network.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

from kseg.constants import (BBOX_OUTSIDE_MODES, DATASETS, FOVS, IMAGE_LABEL_SOURCES, KINDS,
                            OPTIMIZERS, PRECISIONS, STRIDE)


def setting(default: Any = dataclasses.MISSING, help: str = "",
            choices: Sequence[str] | None = None, joint_help: str | None = None):
    """A config field that the command line exposes as a flag of the same name.

    Args:
      default: the default (the one place it is written); omitted for a
        required field (the flag then defaults to None).
      help: the flag's help text.
      choices: the allowed values of a string setting (an enum flag).
      joint_help: DataConfig only: also a `--joint_<name>` flag for the
        Cross-Joint dataset, with this help and the default of JOINT_DEFAULTS.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None,
                "joint_help": joint_help}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which records train and validate, and how examples are supervised.

    `supervision` is the kind of every training example, or, in a semi run,
    of the weak part. A semi run takes its strong images from `strong_split`
    (a prepared split, e.g. VOC's 1,464-image `train`, as the paper; the
    weak part is the training split without those images) or else, when
    `num_strong` >= 0, as the first `num_strong` images of a seeded
    permutation of the training list (`num_strong` = the list's length: all
    strong). Each batch holds `strong_per_batch` + `weak_per_batch` of them.
    With `weak_per_batch` = 0 the run trains on the strong images alone.
    """

    dataset: str = setting(
        "embedded", "Built-in dataset used when --data_dir is not given.", DATASETS,
        joint_help="Cross-Joint: a second built-in dataset trained in the same batches "
                   "(the model takes its labels).")
    data_dir: str | None = setting(
        None, "Prepared TFRecords (scripts/prepare_data.py); default: the embedded dataset, "
        "generated on first use.",
        joint_help="Cross-Joint: prepared records of the second dataset (e.g. COCO).")
    train_split: str = setting("train", "Training split of --data_dir.")
    weak_split: str | None = setting(
        None, "Split of the --supervision examples (default --train_split; Bbox-Seg: the "
        "split scripts/bbox_seg.py wrote).")
    val_split: str = setting("val", "Validation split ('' for none).")
    supervision: str = setting(
        "strong", "Supervision kind of the training images (of the weak part with "
        "--num_strong).", KINDS,
        joint_help="Supervision of the joint dataset (of its weak part with "
                   "--joint_num_strong).")
    batch_size: int = setting(20, "Images per batch (without --num_strong).",
                              joint_help="Joint-dataset images per batch.")
    num_strong: int = setting(
        -1, "If >= 0: this many training images are strong (pixel labels), the rest use "
        "--supervision (semi-supervised).", joint_help="As --num_strong, for the joint dataset.")
    strong_split: str | None = setting(
        None, "Semi: a prepared split whose images are the strong ones (e.g. VOC's 1,464-image "
        "'train'); the rest of --train_split uses --supervision. Overrides --num_strong.")
    strong_per_batch: int = setting(10, "Strong images per batch (semi).",
                                    joint_help="As --strong_per_batch, joint dataset.")
    weak_per_batch: int = setting(10, "Weak images per batch (semi).",
                                  joint_help="As --weak_per_batch, joint dataset.")
    @property
    def semi(self) -> bool:
        """Whether batches mix strong and weak streams."""
        return self.num_strong >= 0 or bool(self.strong_split)

    def __post_init__(self):
        counts = ({"weak_per_batch": self.weak_per_batch, "strong_per_batch": self.strong_per_batch}
                  if self.semi else {"batch_size": self.batch_size})
        for name, value in counts.items():
            if value < (0 if name == "weak_per_batch" else 1):
                raise ValueError(f"--{name}={value}: a batch needs at least one image of "
                                 "each stream")

    # Cross-Joint: a second dataset trained in the same batches. The model's
    # labels are then the joint dataset's; this dataset's labels map into
    # them by class name (VOC names through kseg.data.coco.VOC_TO_COCO) and
    # its examples' loss runs over their own labels only.
    joint: "DataConfig | None" = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What defines the network. `width` scales every channel count;
    `multiscale` adds DeepLab-MSc's branches (kseg.model.build_deeplab).

    `precision` is the Keras dtype policy the network is built with: the
    weights are float32 in every policy, the mixed ones compute conv1-fc7 in
    bfloat16 or float16 while fc8's scores (and so the loss, the E-steps and
    the CRF's unaries) stay float32 (kseg.model.build_deeplab). Evaluation,
    export and prediction rebuild the network with the run's precision unless
    told another.

    A run directory trained again must keep every field but those in
    `TRAINING_ONLY`, which change how the network trains, not its weights
    (kseg.training.checkpoints.check_same_run). `precision` is kept too: a
    resumed run continues with the arithmetic it started with (float16 also
    adds a loss scale to the optimizer's checkpoint)."""

    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("dropout",)

    num_classes: int = setting(21, "Labels including background.")
    fov: str = setting("large", "fc6 field of view.", tuple(FOVS))
    width: float = setting(1.0, "Channel width multiplier (1 = VGG-16).")
    dropout: float = setting(0.5, "Dropout rate after fc6 and fc7 (and after each layer of "
                                  "the --multiscale branches).")
    # DeepLab-MSc (Chen et al., ICLR 2015, the "multi-scale network" of the paper's
    # best rows): a two-layer MLP on the image and on pool1-pool4, concatenated with
    # fc7 before fc8 (docs/network.md).
    multiscale: bool = setting(
        False, "DeepLab-MSc: 128-channel two-layer branches on the input image and on "
        "pool1-pool4, concatenated with fc7's output before fc8 (fc8 reads 640 more "
        "channels, times --width).")
    precision: str = setting(
        "float32", "Arithmetic of the network (a Keras mixed-precision policy; weights stay "
        "float32, fc8's scores, the loss and the E-steps float32): mixed_bfloat16 on CPUs "
        "with AVX512_BF16 / AMX and on recent GPUs (A100, H100, ...), mixed_float16 (with loss "
        "scaling) on older GPUs (V100, T4, ...), float32 elsewhere (README).", PRECISIONS)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.fov not in FOVS:
            raise ValueError(f"fov must be one of {sorted(FOVS)}, got {self.fov!r}")
        if not 0 < self.width <= 1:
            raise ValueError(f"width must be in (0, 1], got {self.width}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Augmentation and decoding settings of the training input."""

    num_classes: int  # the model's (--num_classes)
    crop_size: int = setting(321, "Training crop side (8k+1 is best).")
    flip: bool = setting(True, "Random horizontal flips.")
    image_labels_from: str = setting(
        "image", "Image-level labels of the whole image (paper) or of the crop (released "
        "code).", IMAGE_LABEL_SOURCES)
    shuffle_buffer: int = setting(1000, "Examples in each stream's shuffle buffer.")
    seed: int | None = None  # the run's (--seed); None: not deterministic

    def __post_init__(self):
        if self.image_labels_from not in IMAGE_LABEL_SOURCES:
            raise ValueError("image_labels_from must be 'image' or 'crop', "
                             f"got {self.image_labels_from!r}")
        if self.crop_size < STRIDE:
            raise ValueError(f"crop_size must be >= {STRIDE}, got {self.crop_size}")


@dataclasses.dataclass(frozen=True)
class EStepConfig:
    """E-step hyper-parameters (paper values as defaults, docs/method.md)."""

    fg_bias: float = setting(5.0, "EM-Fixed foreground bias.")
    bg_bias: float = setting(3.0, "EM-Fixed background bias.")
    fg_portion: float = setting(0.2, "EM-Adapt: least share of each present object.")
    bg_portion: float = setting(0.4, "EM-Adapt: least share of background.")
    adapt_iters: int = setting(5, "EM-Adapt passes.")
    adapt_margin: float = setting(1e-5, "EM-Adapt: absent labels are held this far below "
                                        "the present ones.")
    bbox_outside: str = setting(
        "background", "Bbox-EM-Fixed outside boxes: hard background (paper) or a soft bias "
        "(released code).", BBOX_OUTSIDE_MODES)
    # Steps at the start during which Bbox-EM-Fixed fills its boxes (as
    # Bbox-Rect does) instead of trusting the network. 0 = the paper, which
    # starts from ImageNet weights; from random init the network first learns
    # "background everywhere" and EM then never recovers the objects.
    box_warmup_steps: int = setting(
        0, "Bbox-EM-Fixed: fill the boxes (Bbox-Rect like) for this many first steps before "
        "EM (0 = the paper; helps from random init).")
    # EM-Fixed's biases move the object boundaries by a fixed amount of score:
    # while the network's margins are small, that pushes objects over the
    # background step after step (docs/pretraining.md).
    weak_warmup_steps: int = setting(
        0, "Leave image-label examples out of the loss for this many first steps (semi runs "
        "start on their strong images; 0 = the paper).")
    # Not in the paper (docs/departures.md): the weak examples' scores go
    # through the dense CRF (TensorFlow ops, at score-map resolution, DeepLab's
    # test-time parameters scaled to the crop) before the E-step's argmax.
    estep_crf: bool = setting(
        False, "Refine the scores of image-label and box examples with the dense CRF "
        "(kseg.em.crf: TensorFlow ops at score-map resolution, inside the training step) "
        "before the E-step (not in the paper).")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimiser settings (paper values as defaults, docs/training.md)."""

    optimizer: str = setting("sgd", "SGD with momentum (the paper) or Adam (faster from random "
                                    "init on the embedded data).", OPTIMIZERS)
    learning_rate: float = setting(1e-3, "Base learning rate.")
    momentum: float = setting(0.9, "SGD momentum.")
    weight_decay: float = setting(5e-4, "L2 weight decay on kernels.")
    lr_decay_steps: int = setting(2000, "Multiply the rate by --lr_decay every this many "
                                        "steps.")
    lr_decay: float = setting(0.1, "Step decay factor.")
    classifier_lr_mult: float = setting(
        10.0, "Learning-rate multiplier of fc8's kernel (its bias: times --bias_lr_mult).")
    bias_lr_mult: float = setting(2.0, "Learning-rate multiplier of every bias (Caffe's 2).")
    freeze_backbone_steps: int = setting(
        0, "For this many first steps only the layers that do not come from the pretrained "
        "backbone train (fc8, and the --multiscale branches); conv1-fc7 stay as loaded. "
        "A value >= --num_steps freezes them for the whole run.")


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

    model_dir: str = setting(help="Run directory (default runs/<flagfile name>).")
    num_steps: int = setting(6000, "Training steps.")
    steps_per_epoch: int = setting(500, "Steps between val evaluations.")
    log_every: int = setting(20, "Steps between log lines / summaries.")
    image_every: int = setting(500, "Steps between TensorBoard image panels (0: none).")
    checkpoint_every: int = setting(500, "Steps between checkpoints.")
    keep_checkpoints: int = setting(3, "Newest checkpoints kept.")
    checkpoint_input: bool = setting(
        True, "Also checkpoint the input iterator (shuffle buffer, position), so a resumed "
        "run sees the batches an uninterrupted one would; 17 MB instead of 3.7 MB per "
        "checkpoint on the embedded configs.")
    jit_compile: bool = setting(
        False, "Compile the training step with XLA (off: on the CPU measured, bfloat16 ran "
        "far slower with it, BENCHMARKS.md; try it on a GPU). Not with --estep_crf, whose "
        "lattice XLA cannot compile.")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A whole run: one config per concern, the initialisation and the seed."""

    data: DataConfig
    model: ModelConfig
    input: InputConfig
    estep: EStepConfig
    optim: OptimConfig
    loop: LoopConfig
    init: str = setting("random", "'random', 'imagenet' (download through Keras), "
                        "'embedded_imagenet' (conv1-fc7 pretrained on the embedded ImageNet "
                        "stand-in, made once and cached), a local keras.applications.VGG16 "
                        "weights file (.h5) or a backbone file (.npz, scripts/pretrain.py).")
    init_from: str | None = setting(
        None, "A training run directory whose newest checkpoint initialises the network "
        "(Cross-Pretrain).")
    reset_classifier: bool = setting(False, "With --init_from: a fresh classifier (fc8).")
    seed: int = setting(0, "Random seed.")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Classification pretraining on the ImageNet stand-in (docs/pretraining.md).
    The width and FOV must be those of the segmentation runs that load it."""

    width: float = setting(0.125, "Channel width multiplier of the pretrained network.")
    fov: str = setting("large", "fc6 field of view of the pretrained network.", tuple(FOVS))
    dropout: float = setting(0.2, "Dropout after fc6 and fc7 while pretraining.")
    num_steps: int = setting(3000, "Classification training steps.")
    batch_size: int = setting(32, "Images per pretraining batch.")
    learning_rate: float = setting(1e-3, "Adam learning rate of the pretraining.")
    lr_decay_steps: int = setting(2250, "Multiply the pretraining rate by 0.1 after this "
                                       "many steps.")
    seed: int = setting(0, "Random seed of the pretraining.")
    num_train: int = setting(8000, "Stand-in training images.")
    num_val: int = setting(1000, "Stand-in held-out images.")
    image_size: int = setting(64, "Stand-in image side.")


# The Cross-Joint dataset's settings when its flags are not given: 5 + 5 images
# per batch next to the primary dataset's, and no validation split of its own.
JOINT_DEFAULTS = DataConfig(batch_size=10, strong_per_batch=5, weak_per_batch=5, val_split="")
