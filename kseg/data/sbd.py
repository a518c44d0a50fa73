"""The augmented PASCAL VOC 2012 training set, "train_aug" (10,582 images).

The paper trains on VOC 2012 train plus the extra pixel annotations of the
Semantic Boundaries Dataset (SBD, Hariharan et al., ICCV 2011). They are
commonly distributed as label PNGs next to VOC:

    <sbd_root or voc_root>/SegmentationClassAug/<id>.png
        one class index per pixel ('L' or 'P' PNG), 255 void; covers SBD
        train + val and VOC train + val (12,031 files)
    <sbd_root>/train_aug.txt  (or ImageSets/Segmentation/train_aug.txt under
        either root; optional) the list, one id per line or lines such as
        '/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png'
    <sbd_root>[/dataset]/train.txt, val.txt  (optional) SBD's own lists
    <sbd_root>[/dataset]/img/<id>.jpg  (optional) SBD's copy of the images

Every SBD image is a VOC image, so images are read from VOC's JPEGImages
(SBD's img/ is the fallback) and boxes from VOC's SegmentationObject where it
exists, else from VOC's Annotations XML.

Without a train_aug list the list is built as the paper's: (SBD train ∪ SBD
val ∪ VOC train) minus VOC val; without SBD's lists, (every PNG of
SegmentationClassAug ∪ VOC train) minus VOC val, which is the same set when
the directory is the usual 12,031 files (12,031 − 1,449 = 10,582). VOC val
images are never trained on: a given list that holds some loses them (and the
caller reports it).
"""

import dataclasses
import os

from kseg.data import voc
from kseg.data.errors import DataError
from kseg.data.palette import read_label_png

AUG_DIRNAME = "SegmentationClassAug"
TRAIN_AUG_LIST = "train_aug.txt"
TRAIN_AUG_SIZE = 10582  # The paper's list, for messages.


def _sbd_bases(sbd_root):
    """SBD's release nests its files in dataset/; accept either level."""
    if not sbd_root:
        return []
    return [sbd_root, os.path.join(sbd_root, "dataset")]


def find_aug_dir(voc_root, sbd_root=None):
    """SegmentationClassAug under sbd_root (or its dataset/) or voc_root."""
    for base in _sbd_bases(sbd_root) + [voc_root]:
        path = os.path.join(base, AUG_DIRNAME)
        if os.path.isdir(path):
            return path
    return None


def find_train_aug_list(voc_root, sbd_root=None):
    """The train_aug list file if one exists, else None."""
    candidates = []
    for base in _sbd_bases(sbd_root):
        candidates += [os.path.join(base, TRAIN_AUG_LIST),
                       os.path.join(base, "ImageSets", "Segmentation",
                                    TRAIN_AUG_LIST)]
    candidates.append(voc.split_path(voc_root, "train_aug"))
    return next((path for path in candidates if os.path.isfile(path)), None)


def aug_mask_path(aug_dir, image_id):
    return os.path.join(aug_dir, f"{image_id}.png")


@dataclasses.dataclass(frozen=True)
class TrainAugList:
    """The ids of train_aug and how they were obtained.

    Attributes:
      ids: sorted unique ids, VOC val excluded.
      source: where the list came from, for logs.
      duplicates: ids a given list repeats (each kept once).
      held_out: ids of VOC val that a given list file held, removed (a
        list built here leaves VOC val out by definition, so it is empty).
    """
    ids: list
    source: str
    duplicates: list
    held_out: list


def train_aug_ids(voc_root, sbd_root=None):
    """The image ids of train_aug (see the module docstring for the rule).

    Raises:
      DataError: naming a list that is missing, unreadable or empty, or when
        there is neither a list nor a SegmentationClassAug directory.
    """
    val = set(voc.read_split_ids(voc_root, "val"))
    list_path = find_train_aug_list(voc_root, sbd_root)
    if list_path:
        ids, duplicates = voc.split_duplicates(
            voc.read_id_list(list_path, "the train_aug image list"))
        source = list_path
    else:
        voc_train = voc.read_split_ids(voc_root, "train")
        sbd_lists = _find_sbd_lists(sbd_root)
        if sbd_lists:
            ids = list(voc_train)
            for path in sbd_lists:
                ids += voc.read_id_list(path, "an SBD image list")
            source = ("(SBD " + " + ".join(sbd_lists) +
                      " + VOC train) - VOC val")
        else:
            aug_dir = find_aug_dir(voc_root, sbd_root)
            if aug_dir is None:
                raise DataError(
                    f"{sbd_root or voc_root}: no {TRAIN_AUG_LIST}, no SBD "
                    f"train.txt/val.txt and no {AUG_DIRNAME}/ directory; "
                    "expected the augmented set's label PNGs in "
                    f"<sbd_root>/{AUG_DIRNAME}/ (or under the VOC root)")
            pngs = [name[:-4] for name in os.listdir(aug_dir)
                    if name.endswith(".png")]
            ids = list(voc_train) + pngs
            source = f"({aug_dir}/*.png + VOC train) - VOC val"
        ids = sorted(set(ids) - val)
        duplicates = []
    held_out = [image_id for image_id in ids if image_id in val]
    ids = sorted(image_id for image_id in ids if image_id not in val)
    return TrainAugList(ids=ids, source=source, duplicates=duplicates,
                        held_out=held_out)


def _find_sbd_lists(sbd_root):
    for base in _sbd_bases(sbd_root):
        paths = [os.path.join(base, f"{name}.txt")
                 for name in ("train", "val")]
        if all(os.path.isfile(path) for path in paths):
            return paths
    return []


def load_example(voc_root, image_id, num_classes, class_names, aug_dir,
                 sbd_root=None):
    """Reads and validates one train_aug example.

    The class mask is SegmentationClassAug/<id>.png, or VOC's own
    SegmentationClass PNG when the augmented set lacks the image; boxes and
    the image come from VOC (voc.load_example), the image from SBD's img/
    when VOC lacks it.

    Args:
      voc_root: VOCdevkit/VOC2012.
      image_id: a train_aug id.
      num_classes: labels including background (21 for VOC).
      class_names: names of the XML boxes' classes, position = label.
      aug_dir: the SegmentationClassAug directory (find_aug_dir).
      sbd_root: SBD root for the image fallback, or None.

    Returns:
      voc.VocExample with a class mask.

    Raises:
      DataError: naming the file at fault.
    """
    image_file = voc.image_path(voc_root, image_id)
    if not os.path.isfile(image_file):
        for base in _sbd_bases(sbd_root):
            candidate = os.path.join(base, "img", f"{image_id}.jpg")
            if os.path.isfile(candidate):
                image_file = candidate
                break
    example = voc.load_example(voc_root, image_id, num_classes, class_names,
                               require_mask=False, image_file=image_file)
    mask_path = aug_mask_path(aug_dir, image_id)
    if os.path.isfile(mask_path):
        mask = read_label_png(mask_path)
        voc.check_mask(mask, mask_path, example.image.shape[:2], num_classes)
    elif example.class_mask is not None:
        mask = example.class_mask
    else:
        raise DataError(
            f"{mask_path}: class mask not found for image {image_id!r} (nor "
            f"{voc.class_mask_path(voc_root, image_id)}); expected a label "
            "PNG of class indices")
    return dataclasses.replace(example, class_mask=mask)
