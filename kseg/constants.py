"""Constants shared across kseg: labels, supervision kinds and the names of choices.

Every module takes these from here, so a value is written once.
"""

# Label of pixels that carry no label: VOC's object borders, crop padding,
# COCO crowd regions. Never counted in a loss, an E-step or a score.
IGNORE_LABEL = 255

# Supervision kinds: one per training target (kseg.em.targets). The kind of an
# example is data, carried by every batch element as an id into KINDS.
KINDS = ("strong", "bbox_seg", "bbox_rect", "em_fixed", "em_adapt", "bbox_em_fixed")
KIND_ID = {name: i for i, name in enumerate(KINDS)}
# Where the input pipeline takes an example's `label` from, per kind: the mask,
# the boxes rasterised (Bbox-Rect), or nothing (the E-step makes the target).
LABEL_SOURCE = {"strong": "mask", "bbox_seg": "mask", "bbox_rect": "boxes",
                "em_fixed": None, "em_adapt": None, "bbox_em_fixed": None}
# Kinds whose target the E-step computes from the network's scores.
WEAK_KINDS = ("em_fixed", "em_adapt", "bbox_em_fixed")

# The network: the classifier layer's name (fc8; its learning rate is
# multiplied) and the output stride (a 321x321 crop gives a 41x41 score map).
CLASSIFIER = "fc8"
STRIDE = 8
# Field of view of fc6: (kernel, dilation, fc6/fc7 channels at width 1).
FOVS = {"large": (3, 12, 1024), "small": (4, 4, 4096)}
# VGG-16's convolution blocks: (block, number of 3x3 convs, channels at width 1).
VGG_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

# Names of the other choices a run makes.
DATASETS = ("embedded", "embedded_coco")  # built-in datasets, generated on first use
OPTIMIZERS = ("sgd", "adam")
IMAGE_LABEL_SOURCES = ("image", "crop")  # image-level labels of the image or of the crop
BBOX_OUTSIDE_MODES = ("background", "soft")  # Bbox-EM-Fixed outside every box
STRATEGIES = ("default", "mirrored", "multi_worker")  # tf.distribute strategies
# Keras dtype policies of the network (kseg.model.build_deeplab): variables stay
# float32; the mixed ones compute in bfloat16 / float16 (docs/training.md).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
