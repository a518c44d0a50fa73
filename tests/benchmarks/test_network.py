"""kseg/benchmarks/network.py and torch_reference.py: rows, FLOP counts, the peak, the
PyTorch reference against kseg's network, and a tiny run of the whole benchmark."""

import numpy as np
import pytest

from kseg import model
from kseg.benchmarks import network
from kseg.config import ModelConfig


def test_rows_parse_from_their_tokens():
    row = network.Row.parse("train-b1-bf16-xla-em_adapt")
    assert (row.mode, row.batch, row.precision, row.xla, row.kind) == (
        "train", 1, "bf16", True, "em_adapt")
    assert (row.width, row.size) == (1.0, 321)
    assert row.name == "training b1 bf16 XLA em_adapt"
    embedded = network.Row.parse("train-b10-fp32-embedded", width=0.5, size=65)
    assert (embedded.width, embedded.size) == (0.125, 129)
    assert network.Row.parse("infer-b4-fp32", width=0.5, size=65).size == 65
    for bad, message in (("train-b1-fp64", "unknown token"), ("infer-bf16", "needs a mode"),
                         ("infer-b1-em_fixed", "needs a train row")):
        with pytest.raises(ValueError, match=message):
            network.Row.parse(bad)
    assert all(network.Row.parse(r) for r in network.DEFAULT_ROWS)


def test_machine_peak_is_cores_clock_units_lanes_and_two(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some Xeon\ncpu MHz\t\t: 2100.000\n"
                       "flags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_bf16\n")
    peak = network.machine_peak(cores=2, cpuinfo=str(cpuinfo))
    assert peak["fp32"] == pytest.approx(2 * 2.1 * 2 * 16 * 2)  # 268.8 GFLOP/s
    assert peak["bf16"] == pytest.approx(2 * 2.1 * 1024)
    cpuinfo.write_text("cpu MHz\t\t: 3000.0\nflags\t\t: avx2 fma\n")
    peak = network.machine_peak(cores=4, cpuinfo=str(cpuinfo))
    assert (peak["fp32"], peak["bf16"]) == (pytest.approx(4 * 3.0 * 2 * 8 * 2), peak["fp32"])


@pytest.mark.slow  # full-size VGG16
def test_forward_flops_of_deeplab_largefov_at_321():
    """2 x multiply-adds, worked out from the layer table of docs/network.md."""
    maps = {1: 321, 2: 161, 3: 81, 4: 41, 5: 41}  # conv5 after the stride-1 pool4
    convs = [(1, 3, 64), (1, 64, 64), (2, 64, 128), (2, 128, 128), (3, 128, 256),
             (3, 256, 256), (3, 256, 256), (4, 256, 512), (4, 512, 512), (4, 512, 512),
             (5, 512, 512), (5, 512, 512), (5, 512, 512)]
    macs = sum(maps[b] ** 2 * 9 * cin * cout for b, cin, cout in convs)
    macs += 41 ** 2 * (9 * 512 * 1024 + 1024 * 1024 + 1024 * 21)  # fc6, fc7, fc8
    net = model.build_deeplab(ModelConfig(num_classes=21))
    assert network.keras_forward_flops(net, 321, 321) == 2 * macs
    assert 101e9 < 2 * macs < 103e9


@pytest.mark.parametrize("width,size", [pytest.param(1.0, 33, marks=pytest.mark.slow),
                                        (0.125, 40)])
def test_torch_reference_is_kseg_network(width, size):
    """Same parameters, output shape and FLOP count as kseg's network."""
    torch = pytest.importorskip("torch")
    from kseg.benchmarks import torch_reference
    net = model.build_deeplab(ModelConfig(num_classes=21, width=width))
    reference = torch_reference.DeepLabVGG16(21, width)
    assert sum(p.numel() for p in reference.parameters()) == net.count_params()
    with torch.inference_mode():
        out = reference.eval()(torch.zeros(1, 3, size, size))
    keras_out = net(np.zeros((1, size, size, 3), np.float32))
    assert tuple(out.shape) == (1, 21, *keras_out.shape[1:3])
    assert torch_reference.forward_flops(reference, size, size) == \
        network.keras_forward_flops(net, size, size)


@pytest.mark.slow  # two worker processes, traced steps
def test_tiny_benchmark_run_reports_every_row(capsys):
    rows = [network.Row.parse(r, width=0.0625, size=33)
            for r in ("infer-b1-fp32", "train-b2-bf16-em_adapt")]
    result = network.benchmark_network(rows, rounds=2, warmup=1, gemm_size=256)
    assert [out["name"] for out in result["rows"]] == [row.name for row in rows]
    frameworks = ["kseg"] + (["torch"] if result["torch"] else [])
    for out in result["rows"]:
        for framework in frameworks:
            assert out[f"{framework}_images_per_s"] > 0
            assert out[f"{framework}_flops"] == out["flops"] > 0
    assert result["gemm"]["float32"] > 0
    lines = network.format_result(result)
    assert any("training b2 bf16 em_adapt" in line for line in lines)
    assert any(line.startswith("Peak: ") and "GFLOP/s fp32" in line for line in lines)
