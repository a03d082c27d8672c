"""Build the bundled MobileNetV3-style example: model.onnx + model.data + model.encodings + inputs.npy.

A MobileNetV3-Large-like network (64x64 input, 10 classes, one 672-channel depthwise layer) with seeded
weights of realistic spread: kaiming-normal convs, then BatchNorm with random affine params and running
stats folded into them by aimet-onnx, so some depthwise channels end up far smaller than others. It is
quantized with aimet-onnx under the per-tensor config users report (quantsim_config.json: symmetric
per-tensor weights, unsigned_symmetric, float bias, Conv+HardSwish supergroup), calibrated on seeded
random data and exported in encodings version 1.0.0. Needs torch + aimet-onnx:

    /work/venv/bin/python examples/mobilenetv3/make_example.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "scripts"))

import make_aimet_fixtures as fx  # noqa: E402  (script helpers, shared with the test fixtures)

INPUT_SHAPE = (1, 3, 64, 64)
SEED = 2024
# (cin, hidden, cout, kernel, stride, squeeze-excite, activation), after MobileNetV3-Large
BLOCKS = [
    (16, 16, 16, 3, 1, False, nn.ReLU),
    (16, 64, 24, 3, 2, False, nn.ReLU),
    (24, 72, 24, 3, 1, False, nn.ReLU),
    (24, 72, 40, 5, 2, True, nn.ReLU),
    (40, 120, 40, 5, 1, True, nn.ReLU),
    (40, 240, 80, 3, 2, False, nn.Hardswish),
    (80, 184, 80, 3, 1, False, nn.Hardswish),
    (80, 480, 112, 3, 1, True, nn.Hardswish),
    (112, 672, 112, 3, 1, True, nn.Hardswish),  # the 672-channel depthwise layer users report
    (112, 672, 160, 5, 2, True, nn.Hardswish),
]


def build(seed: int = SEED) -> nn.Module:
    import torch

    torch.manual_seed(seed)
    net = fx.MobileNetV3Like(BLOCKS, stem=16, classes=10, last=480)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:  # not zeros: the exporter would merge identical zero biases
                nn.init.normal_(module.bias, 0.0, 0.01)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.05)
            nn.init.normal_(module.bias, 0.0, 0.01)
    fx.randomize_batchnorms(net, np.random.default_rng(seed))
    return net.eval()


def main() -> None:
    start = time.perf_counter()
    config_path = HERE / "quantsim_config.json"
    config_path.write_text(json.dumps(fx.user_per_tensor_config(), indent=2) + "\n")
    model = fx.torch_to_onnx(build(), INPUT_SHAPE)
    calibration = list(fx.sample_data(INPUT_SHAPE, 8, SEED + 1)[:, None])
    sim = fx.quantize(model, config_path, calibration)
    fx.export(sim, HERE, versions=("1.0.0",))
    inputs = fx.sample_data(INPUT_SHAPE, 8, SEED + 2)
    np.save(HERE / "inputs.npy", inputs)
    sizes = {p.name: p.stat().st_size for p in sorted(HERE.glob("model.*"))}
    print(f"wrote {HERE} in {time.perf_counter() - start:.1f}s: {sizes}, inputs {inputs.shape}")


if __name__ == "__main__":
    main()
