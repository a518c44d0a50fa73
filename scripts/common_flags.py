"""Flags shared by the scripts, and their translation into kseg configs.

Only scripts import this module: the library never reads flags."""

from absl import flags

from kseg import config, constants

FLAGS = flags.FLAGS


def define_data_flags():
    flags.DEFINE_enum("dataset", "embedded", ["embedded", "embedded_coco"],
                      "Built-in dataset used when --data_dir is not given.")
    flags.DEFINE_string("data_dir", None, "Prepared TFRecords (scripts/prepare_data.py); "
                        "default: the embedded dataset, generated on first use.")
    flags.DEFINE_string("train_split", "train", "Training split of --data_dir.")
    flags.DEFINE_string("val_split", "val", "Validation split ('' for none).")
    flags.DEFINE_string("weak_split", None, "Split of the --supervision examples (default "
                        "--train_split; Bbox-Seg: the split scripts/bbox_seg.py wrote).")


def define_train_flags():
    define_data_flags()
    flags.DEFINE_enum("supervision", "strong", list(constants.KINDS),
                      "Supervision kind of the training images (of the weak part with "
                      "--num_strong).")
    flags.DEFINE_integer("num_strong", -1, "If >= 0: this many training images are strong "
                         "(pixel labels), the rest use --supervision (semi-supervised).")
    flags.DEFINE_integer("batch_size", 20, "Images per batch (without --num_strong).")
    flags.DEFINE_integer("strong_per_batch", 10, "Strong images per batch (semi).")
    flags.DEFINE_integer("weak_per_batch", 10, "Weak images per batch (semi).")
    flags.DEFINE_enum("joint_dataset", None, ["embedded", "embedded_coco"],
                      "Cross-Joint: a second built-in dataset trained in the same batches "
                      "(the model takes its labels).")
    flags.DEFINE_string("joint_data_dir", None, "Cross-Joint: prepared records of the second "
                        "dataset (e.g. COCO).")
    flags.DEFINE_enum("joint_supervision", "strong", list(constants.KINDS),
                      "Supervision of the joint dataset (of its weak part with "
                      "--joint_num_strong).")
    flags.DEFINE_integer("joint_batch_size", 10, "Joint-dataset images per batch.")
    flags.DEFINE_integer("joint_num_strong", -1, "As --num_strong, for the joint dataset.")
    flags.DEFINE_integer("joint_strong_per_batch", 5, "As --strong_per_batch, joint dataset.")
    flags.DEFINE_integer("joint_weak_per_batch", 5, "As --weak_per_batch, joint dataset.")
    flags.DEFINE_enum("fov", "large", list(constants.FOVS), "fc6 field of view.")
    flags.DEFINE_float("width", 1.0, "Channel width multiplier (1 = VGG-16).")
    flags.DEFINE_integer("num_classes", 21, "Labels including background.")
    flags.DEFINE_float("dropout", 0.5, "Dropout rate after fc6 and fc7.")
    flags.DEFINE_string("init", "random", "'random', 'imagenet' (download through Keras) "
                        "or a local keras.applications.VGG16 weights file.")
    flags.DEFINE_string("init_from", None, "A training run directory whose newest checkpoint "
                        "initialises the network (Cross-Pretrain).")
    flags.DEFINE_bool("reset_classifier", False, "With --init_from: a fresh classifier (fc8).")
    flags.DEFINE_integer("crop_size", 321, "Training crop side (8k+1 is best).")
    flags.DEFINE_bool("flip", True, "Random horizontal flips.")
    flags.DEFINE_enum("image_labels_from", "image", ["image", "crop"],
                      "Image-level labels of the whole image (paper) or of the crop "
                      "(released code).")
    flags.DEFINE_float("fg_bias", 5.0, "EM-Fixed foreground bias.")
    flags.DEFINE_float("bg_bias", 3.0, "EM-Fixed background bias.")
    flags.DEFINE_float("fg_portion", 0.2, "EM-Adapt: least share of each present object.")
    flags.DEFINE_float("bg_portion", 0.4, "EM-Adapt: least share of background.")
    flags.DEFINE_integer("adapt_iters", 5, "EM-Adapt passes.")
    flags.DEFINE_float("adapt_margin", 1e-5, "EM-Adapt: absent labels are held this far "
                       "below the present ones.")
    flags.DEFINE_integer("box_warmup_steps", 0, "Bbox-EM-Fixed: fill the boxes (Bbox-Rect "
                         "like) for this many first steps before EM (0 = the paper; helps "
                         "from random init).")
    flags.DEFINE_enum("bbox_outside", "background", ["background", "soft"],
                      "Bbox-EM-Fixed outside boxes: hard background (paper) or a "
                      "soft bias (released code).")
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "SGD with momentum (the paper) or "
                      "Adam (faster from random init on the embedded data).")
    flags.DEFINE_float("learning_rate", 1e-3, "Base learning rate.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
    flags.DEFINE_float("weight_decay", 5e-4, "L2 weight decay on kernels.")
    flags.DEFINE_integer("lr_decay_steps", 2000, "Multiply the rate by --lr_decay every "
                         "this many steps.")
    flags.DEFINE_float("lr_decay", 0.1, "Step decay factor.")
    flags.DEFINE_float("classifier_lr_mult", 10.0, "Learning-rate multiplier of fc8.")
    flags.DEFINE_integer("num_steps", 6000, "Training steps.")
    flags.DEFINE_integer("steps_per_epoch", 500, "Steps between val evaluations.")
    flags.DEFINE_integer("log_every", 20, "Steps between log lines / summaries.")
    flags.DEFINE_integer("image_every", 500, "Steps between TensorBoard image panels (0: none).")
    flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_string("model_dir", None, "Run directory (default runs/<flagfile name>).")
    flags.DEFINE_bool("checkpoint_input", True, "Also checkpoint the input iterator (shuffle "
                      "buffer, position), so a resumed run sees the batches an uninterrupted "
                      "one would; 17 MB instead of 3.7 MB per checkpoint on the embedded configs.")
    flags.DEFINE_integer("keep_checkpoints", 3, "Newest checkpoints kept.")
    flags.DEFINE_enum("strategy", None, list(constants.STRATEGIES),
                      "Distribution: one device, MirroredStrategy over this machine's GPUs, "
                      "or MultiWorkerMirroredStrategy over the machines named in TF_CONFIG. "
                      "Default: mirrored when more than one GPU is visible, else default. "
                      "--batch_size is the global batch, split evenly over all replicas.")


def joint_config():
    """The Cross-Joint second dataset's DataConfig, or None."""
    f = FLAGS
    if not (f.joint_dataset or f.joint_data_dir):
        return None
    return config.DataConfig(
        dataset=f.joint_dataset or "embedded", data_dir=f.joint_data_dir,
        supervision=f.joint_supervision, batch_size=f.joint_batch_size,
        num_strong=f.joint_num_strong, strong_per_batch=f.joint_strong_per_batch,
        weak_per_batch=f.joint_weak_per_batch, val_split="")


def experiment_from_flags(model_dir: str) -> config.Experiment:
    f = FLAGS
    return config.Experiment(
        data=config.DataConfig(
            dataset=f.dataset, data_dir=f.data_dir, train_split=f.train_split,
            weak_split=f.weak_split, val_split=f.val_split, supervision=f.supervision,
            batch_size=f.batch_size, num_strong=f.num_strong,
            strong_per_batch=f.strong_per_batch, weak_per_batch=f.weak_per_batch,
            joint=joint_config()),
        model=config.ModelConfig(num_classes=f.num_classes, fov=f.fov, width=f.width,
                                dropout=f.dropout),
        input=config.InputConfig(num_classes=f.num_classes, crop_size=f.crop_size,
                                   flip=f.flip, image_labels_from=f.image_labels_from,
                                   seed=f.seed),
        estep=config.EStepConfig(
            fg_bias=f.fg_bias, bg_bias=f.bg_bias, fg_portion=f.fg_portion,
            bg_portion=f.bg_portion, adapt_iters=f.adapt_iters, adapt_margin=f.adapt_margin,
            bbox_outside=f.bbox_outside, box_warmup_steps=f.box_warmup_steps),
        optim=config.OptimConfig(
            optimizer=f.optimizer, learning_rate=f.learning_rate, momentum=f.momentum, weight_decay=f.weight_decay,
            lr_decay_steps=f.lr_decay_steps, lr_decay=f.lr_decay,
            classifier_lr_mult=f.classifier_lr_mult),
        loop=config.LoopConfig(
            model_dir=model_dir, num_steps=f.num_steps, steps_per_epoch=f.steps_per_epoch,
            log_every=f.log_every, image_every=f.image_every, checkpoint_every=f.checkpoint_every,
            keep_checkpoints=f.keep_checkpoints, checkpoint_input=f.checkpoint_input),
        init=f.init, init_from=f.init_from, reset_classifier=f.reset_classifier, seed=f.seed)
