"""The ImageNet stand-in set and the pretrained start (--init=embedded_imagenet)."""

import hashlib

import numpy as np
import pytest

from kseg import experiment, model
from kseg.data import embedded, standin
from kseg.training import pretrain


def _hashes(images):
    return {hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}


def test_classes_cover_the_segmentation_classes():
    # The five segmentation classes, shape and texture as the segmentation set
    # draws them, are among many more (ImageNet's classes cover VOC's).
    assert standin.CLASSES[:5] == (("disc", "rings"), ("square", "checker"),
                                   ("triangle", "stripes"), ("ring", "grid"),
                                   ("cross", "dots"))
    assert len(set(standin.CLASSES)) == len(standin.CLASSES) == standin.NUM_CLASSES
    assert standin.NUM_CLASSES >= 8 * (len(embedded.EMBEDDED_CLASSES) - 1)


def test_shares_no_image_with_the_segmentation_set(tmp_path):
    size = 32
    seg_root = tmp_path / "seg"
    embedded.generate(str(seg_root), num_train=40, num_val=10, image_size=size)
    seg = [embedded.render_example(np.random.default_rng([0, split, i]), size)[0]
           for split, count in ((0, 40), (1, 10)) for i in range(count)]
    root = tmp_path / "standin"
    standin.generate(str(root), num_train=40, num_val=10, image_size=size)
    images = np.concatenate([standin.load_split(str(root), s)[0] for s in ("train", "val")])
    labels = np.concatenate([standin.load_split(str(root), s)[1] for s in ("train", "val")])
    assert images.shape == (50, size, size, 3) and images.dtype == np.uint8
    assert labels.min() >= 0 and labels.max() < standin.NUM_CLASSES
    assert not _hashes(images) & _hashes(seg)
    # Not even the generators are shared: the first draws of image i differ.
    for i in range(10):
        assert (standin.example_rng(0, "train", i).random(4)
                != np.random.default_rng([0, 0, i]).random(4)).all()


def test_generation_is_deterministic():
    a = standin.render_example(standin.example_rng(3, "train", 5), 48)
    b = standin.render_example(standin.example_rng(3, "train", 5), 48)
    assert a[1] == b[1] and np.array_equal(a[0], b[0])


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    config = pretrain.PretrainConfig(width=0.03, fov="large", num_steps=8, batch_size=4,
                                     lr_decay_steps=100, num_train=24, num_val=8,
                                     image_size=32)
    cache = str(tmp_path_factory.mktemp("cache"))
    path = pretrain.ensure_backbone(config, cache, log=lambda s: None)
    return config, cache, path


def test_backbone_is_cached_with_its_accuracy(tiny_backbone):
    config, cache, path = tiny_backbone
    info = pretrain.backbone_info(path)
    assert 0.0 <= info["val_top1"] <= 1.0
    assert info["config"]["width"] == config.width
    # A second call finds the file instead of training again.
    assert pretrain.ensure_backbone(config, cache, log=lambda s: 1 / 0) == path


def test_init_loads_conv1_to_fc7_and_leaves_fc8_fresh(tiny_backbone):
    config, _, path = tiny_backbone
    weights = model.read_backbone_file(path)
    assert set(weights) == set(model.BACKBONE_LAYERS)
    fresh = model.build_deeplab(model.ModelConfig(num_classes=6, width=config.width))
    net = model.build_deeplab(model.ModelConfig(num_classes=6, width=config.width))
    net.get_layer(model.CLASSIFIER).set_weights(fresh.get_layer(model.CLASSIFIER).get_weights())
    before = net.get_layer(model.CLASSIFIER).get_weights()
    model.initialise(net, "large", path)
    for name in model.BACKBONE_LAYERS:
        for got, want in zip(net.get_layer(name).get_weights(), weights[name]):
            np.testing.assert_array_equal(got, want)
        # ... and they are not what a random init draws.
        assert not np.array_equal(net.get_layer(name).get_weights()[0],
                                  fresh.get_layer(name).get_weights()[0])
    for got, want in zip(net.get_layer(model.CLASSIFIER).get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_backbone_of_another_width_is_refused(tiny_backbone):
    _, _, path = tiny_backbone
    net = model.build_deeplab(model.ModelConfig(num_classes=6, width=0.0625))
    with pytest.raises(ValueError, match="another --width or --fov"):
        model.initialise(net, "large", path)


def test_embedded_imagenet_resolves_to_the_backbone_of_the_width_and_fov(monkeypatch):
    seen = []
    monkeypatch.setattr(pretrain, "ensure_backbone", lambda c: seen.append(c) or "/x.npz")
    config = model.ModelConfig(num_classes=6, width=0.125, fov="small")
    assert experiment.resolve_init("embedded_imagenet", config) == "/x.npz"
    assert (seen[0].width, seen[0].fov) == (0.125, "small")
    assert experiment.resolve_init("random", config) == "random"
