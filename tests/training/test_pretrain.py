"""Pretraining on the ImageNet stand-in and the pretrained start (--init=embedded_imagenet)."""

import numpy as np
import pytest

from kseg import experiment, model
from kseg.config import PretrainConfig
from kseg.training import pretrain


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    config = PretrainConfig(width=0.03, fov="large", num_steps=8, batch_size=4,
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
