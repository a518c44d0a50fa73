"""DeepLab-v1 (VGG-16, atrous) written plainly in PyTorch: the reference kseg is timed against.

Only the benchmark uses it (`kseg.benchmarks.network`, `scripts/benchmark.py
--what=network`). PyTorch is an optional extra, never a dependency of kseg:
`pip install -e '.[bench]'`. This module imports `torch` at the top, so only
import it where torch is wanted (`kseg.benchmarks.network.torch_available`
tells).

The network is kseg's (docs/network.md, `kseg.model.build_deeplab`), layer
for layer, in PyTorch's default NCHW layout and default initialisation: the
13 VGG-16 3x3 convolutions with ReLU (conv5 dilated by 2), 3x3 max pools with
stride 2, 2, 2, 1, 1 and padding 1 (the output sizes of Keras' 'same' pools),
fc6 (3x3 dilation 12, 1024 channels, or 4x4 dilation 4, 4096 for the small
field of view), fc7 (1x1), dropout after both, fc8 (1x1 to the classes).
Nothing here is tuned (no channels_last, no torch.compile): what a user who
writes the paper's network in PyTorch gets.

The training step is the paper's: softmax cross-entropy over the pixels whose
target is not 255, SGD with momentum 0.9 and weight decay 5e-4. It has no
E-step: kseg's E-step kinds are timed against this strong step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kseg.constants import FOVS, IGNORE_LABEL, VGG_BLOCKS

# torch.autocast dtypes of the benchmark's precisions (float32: no autocast).
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _channels(base: int, width: float) -> int:
    """As kseg.model's channel rounding (not imported: that would load TensorFlow)."""
    return max(4, int(round(base * width)))


class DeepLabVGG16(nn.Module):
    """DeepLab-v1 on VGG-16: (B, 3, H, W) float32 -> (B, C, ceil(H/8), ceil(W/8)) scores."""

    def __init__(self, num_classes: int = 21, width: float = 1.0, fov: str = "large",
                 dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for block, num_convs, base in VGG_BLOCKS:
            dilation = 2 if block == 5 else 1
            out_channels = _channels(base, width)
            for _ in range(num_convs):
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=dilation,
                                     dilation=dilation), nn.ReLU(inplace=True)]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(3, stride=2 if block <= 3 else 1, padding=1))
        kernel, dilation, fc_base = FOVS[fov]
        fc_channels = _channels(fc_base, width)
        layers += [nn.Conv2d(in_channels, fc_channels, kernel, padding=dilation * (kernel - 1) // 2,
                             dilation=dilation), nn.ReLU(inplace=True), nn.Dropout(dropout),
                   nn.Conv2d(fc_channels, fc_channels, 1), nn.ReLU(inplace=True),
                   nn.Dropout(dropout), nn.Conv2d(fc_channels, num_classes, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def forward_flops(net: DeepLabVGG16, height: int, width: int) -> int:
    """Multiply-adds x 2 of the convolutions for one (height, width) image.

    Walks the layers, tracking the spatial size through the pools; the
    benchmark checks it equals the count from kseg's Keras layers."""
    total = 0
    for layer in net.layers:
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += 2 * height * width * kh * kw * layer.in_channels * layer.out_channels
        elif isinstance(layer, nn.MaxPool2d):
            height, width = -(-height // layer.stride), -(-width // layer.stride)
    return total


class TorchRunner:
    """One benchmark row in PyTorch: `setup(row)`, then `run()` is one timed call.

    A row is a dict (kseg.benchmarks.network.Row.as_dict): mode ('train',
    'infer' or 'serve'; 'serve' times the plain network, as 'infer'), batch,
    size, width, num_classes, precision ('fp32', 'bf16' or 'fp16' under
    torch.autocast). Its xla and kind do not apply (no XLA, no E-step).
    """

    def __init__(self, threads: int):
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        self.run = None
        self.net = None

    def setup(self, row: dict) -> dict:
        torch.manual_seed(0)
        net = DeepLabVGG16(row["num_classes"], row["width"])
        size, batch = row["size"], row["batch"]
        images = torch.randn(batch, 3, size, size) * 60.0
        autocast = AUTOCAST.get(row["precision"])

        def forward(x):
            if autocast is None:
                return net(x)
            with torch.autocast("cpu", dtype=autocast):
                return net(x)

        if row["mode"] == "train":
            net.train()
            h = -(-size // 8)
            targets = torch.randint(0, row["num_classes"], (batch, h, h))
            optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9,
                                        weight_decay=5e-4)

            def run():
                optimizer.zero_grad(set_to_none=True)
                scores = forward(images).float()
                loss = F.cross_entropy(scores, targets, ignore_index=IGNORE_LABEL)
                loss.backward()
                optimizer.step()
                return loss.item()
        else:
            net.eval()

            def run():
                with torch.inference_mode():
                    return forward(images).float().sum().item()
        self.net, self.run = net, run
        return {"flops": forward_flops(net, size, size),
                "params": sum(p.numel() for p in net.parameters())}

    def release(self) -> None:
        self.net = self.run = None
