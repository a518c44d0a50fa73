"""The benchmark library functions (kseg/benchmarks/) at tiny sizes: they run, and what
they report is consistent (timings themselves are not checked)."""

import io

import numpy as np
import pytest
from PIL import Image

from kseg.benchmarks import crf as crf_bench
from kseg.benchmarks import crf_tf as crf_tf_bench
from kseg.benchmarks import training as training_bench
from kseg.config import EStepConfig, InputConfig, ModelConfig
from kseg.crf.dense import CRFParams
from kseg.data import pipeline, records

FAST = CRFParams(num_iter=2)


def test_synthetic_crf_input_is_a_valid_crf_input():
    image, probs = crf_bench.synthetic_crf_input(12, 17, 4, seed=0)
    assert image.shape == (12, 17, 3) and image.dtype == np.uint8
    assert probs.shape == (12, 17, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-3)
    again, _ = crf_bench.synthetic_crf_input(12, 17, 4, seed=0)
    np.testing.assert_array_equal(image, again)


def test_benchmark_crf_tiny():
    result = crf_bench.benchmark_crf(height=10, width=14, num_labels=3, num_images=3,
                                     workers=(1, 2), params=FAST)
    assert [run["workers"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:  # seconds are rounded to the millisecond
        assert abs(3 / run["images_per_second"] - run["seconds"]) <= 5e-4 + 1e-9
    assert abs(result["speedup"] - result["runs"][1]["images_per_second"]
               / result["runs"][0]["images_per_second"]) <= 5e-4 + 1e-9


@pytest.mark.slow
def test_benchmark_crf_tf_tiny():
    # Two cores: the pydensecrf pool, the TF pool and the blocked single image all run.
    result = crf_tf_bench.benchmark_crf_tf(height=9, width=11, num_labels=3, rounds=1,
                                           cores=(2,), params=FAST)
    [run] = result["runs"]
    assert run["cores"] == 2 and {"tf_one_image", "tf_pool", "pydensecrf"} <= set(run)
    # Same model, two implementations: (almost) the same labels.
    assert run["label_agreement"] > 0.9
    # CPU seconds come in clock ticks (10 ms): a tiny image may take none.
    assert run["tf_pool_cpu"] >= 0 and run["pydensecrf_cpu"] >= 0
    assert "2 core(s)" in crf_tf_bench.format_result(result)[1]


@pytest.mark.slow  # traced training steps
def test_training_benchmarks_tiny(tiny_records):
    batch = training_bench.synthetic_batch(2, 17, 3, seed=0)
    assert batch["label"].shape == (2, 3, 3) and batch["image_labels"].numpy()[:, 0].all()
    assert (training_bench.with_kind(batch, "em_adapt")["kind"].numpy() == 4).all()
    trainer = training_bench.make_trainer(ModelConfig(num_classes=3, width=0.0625))
    times = training_bench.train_step_seconds(trainer, {"strong": batch}, rounds=1, warmup=1)
    assert list(times) == ["strong"] and times["strong"] > 0
    assert int(trainer.optimizer.iterations.numpy()) == 2  # warm-up + one round
    esteps = training_bench.estep_seconds(batch, 3, ("em_fixed", "em_adapt"), rounds=1)
    assert list(esteps) == ["em_fixed", "em_adapt"]
    # --estep_crf: a second trainer, alternating with the first.
    refined = training_bench.make_trainer(ModelConfig(num_classes=3, width=0.0625),
                                          estep=EStepConfig(estep_crf=True))
    weak = training_bench.with_kind(batch, "em_adapt")
    times = training_bench.steps_seconds({"plain": (trainer, weak), "crf": (refined, weak)},
                                         rounds=1, warmup=1)
    assert set(times) == {"plain", "crf"} and int(refined.optimizer.iterations.numpy()) == 2
    alone = training_bench.estep_crf_alone_seconds(batch, 3, rounds=1)
    assert set(alone) == {"score_map", "input"} and min(alone.values()) > 0

    stream = pipeline.Stream(records.split_pattern(tiny_records, "train"), "strong", 2)
    rate = training_bench.pipeline_images_per_second(
        [stream], InputConfig(num_classes=6, crop_size=17, seed=0), num_batches=2, warmup=1)
    assert rate > 0
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, "JPEG")
    decoded = training_bench.jpeg_decode_seconds([buffer.getvalue()] * 2, rounds=1)
    assert set(decoded) == {"default", "accurate"}


@pytest.mark.slow  # traces four functions: a training step and inference, with and without MSc
def test_multiscale_benchmark_tiny():
    r = training_bench.multiscale_seconds(width=0.0625, crop_size=17, rounds=1, warmup=1)
    assert set(r) == {"train", "inference", "params"}
    assert all(r[what][name] > 0 for what in ("train", "inference") for name in ("single", "msc"))
    # The branches add 5 x 8 channels before fc8 and their own weights.
    assert r["params"]["msc"] > r["params"]["single"] + 5 * 8 * 21
    calls = []
    times = training_bench.alternating_seconds({"a": lambda: calls.append("a"),
                                                "b": lambda: calls.append("b")}, 2, 1)
    assert calls == ["a", "b", "a", "b", "a", "b"] and set(times) == {"a", "b"}
