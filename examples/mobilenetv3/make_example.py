"""Build the bundled MobileNetV3-style example: a small trained classifier quantized with aimet-onnx.

What it builds:

* a MobileNetV3-Large-like network (64x64 RGB input, 100 classes): inverted-residual blocks with depthwise
  convs, ReLU early and HardSwish late, squeeze-excite, one stride-2 depthwise -> HardSwish stage and one
  672-channel stride-1 depthwise layer (the one users report), ~1.3M parameters;
* trained briefly (``STEPS`` steps of AdamW + one-cycle LR, batch ``BATCH``, seeded, CPU) on a procedural
  100-class task, ``gratings``: a Gabor-windowed grating at random position, phase, size and contrast whose
  class is orientation (10 steps of 18 deg) x period (5 steps from 16 to 4 px) x profile (sine or square),
  with random colour, background and noise, so that some images are genuinely ambiguous;
* BatchNorm kept in training, folded into the weights by aimet-onnx (``fold_all_batch_norms_to_weight``),
  so depthwise channel ranges spread as training makes them (max/median channel range 2-3.5x here, milder
  than a long ImageNet training);
* quantized with aimet-onnx under the per-tensor config users report (``quantsim_config.json``: symmetric
  per-tensor 8-bit weights, unsigned_symmetric True, strict_symmetric False, float bias, a Conv+HardSwish
  supergroup; aimet-onnx applies supergroups to regular convs only, so depthwise conv outputs keep their
  own quantizer), min/max calibration on ``CALIBRATION`` generated images, exported as ``model.onnx`` +
  ``model.data`` + ``model.encodings`` (1.0.0);
* ``inputs.npy`` (32 held-out images, samples on the first axis) and ``labels.npy`` (their classes), and
  ``README.md`` with the float and QuantSim accuracy measured on them and on ``HELD_OUT`` held-out images.

Training dominates the run time: about 0.09 s per step on an idle 2-core CPU (~2 minutes), 4.5 and 6.5
minutes measured on a shared, loaded one; quantization, export and evaluation take a few seconds more. Two
runs on the same machine and library versions gave identical bytes for every file (torch is pinned to
``THREADS`` threads because the float reduction order depends on it); another CPU or torch version may
differ in the last bits of the weights and so in a few encodings.
Needs torch + aimet-onnx:

    /work/venv/bin/python examples/mobilenetv3/make_example.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "scripts"))

import make_aimet_fixtures as fx  # noqa: E402  (script helpers, shared with the test fixtures)

INPUT_SHAPE = (1, 3, 64, 64)
CLASSES = 100
SEED = 2024
THREADS = 2
STEPS, BATCH, LR = 1200, 64, 4e-3
CALIBRATION = 64  # batch-1 images for aimet's min/max calibration
HELD_OUT = 512  # held-out images for the accuracy in README.md; the first 32 become inputs.npy
SAVED = 32
# (cin, hidden, cout, kernel, stride, squeeze-excite, activation), after MobileNetV3-Large
BLOCKS = [
    (16, 16, 16, 3, 1, False, nn.ReLU),
    (16, 64, 24, 3, 2, False, nn.ReLU),
    (24, 72, 24, 3, 1, False, nn.ReLU),
    (24, 72, 40, 5, 2, True, nn.ReLU),
    (40, 120, 40, 5, 1, True, nn.ReLU),
    (40, 240, 80, 3, 2, False, nn.Hardswish),  # stride-2 depthwise -> HardSwish
    (80, 184, 80, 3, 1, False, nn.Hardswish),
    (80, 480, 112, 3, 1, True, nn.Hardswish),
    (112, 672, 112, 3, 1, True, nn.Hardswish),  # the 672-channel depthwise layer users report
    (112, 672, 160, 5, 2, True, nn.Hardswish),
]
# grating period in pixels for each of the 5 frequency classes (ratio ~1.41, jittered by +-6% below)
PERIODS = torch.tensor([16.0, 11.3, 8.0, 5.7, 4.0])


def gratings(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images (N, 3, 64, 64) and labels: class = orientation + 10 * period + 50 * square profile."""
    size = INPUT_SHAPE[-1]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(count, *shape, generator=generator)

    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    orientation, period, square = labels % 10, (labels // 10) % 5, labels // 50
    theta = ((orientation + uniform(-0.2, 0.2)) * math.pi / 10)[:, None, None]
    frequency = (uniform(0.94, 1.06) / PERIODS[period])[:, None, None]
    cx, cy = (uniform(0.3, 0.7, 1, 1) * size for _ in range(2))
    sigma = uniform(0.15, 0.3, 1, 1) * size
    grid = torch.arange(size, dtype=torch.float32)
    yy, xx = grid[:, None], grid[None, :]
    along = (xx - cx) * torch.cos(theta) + (yy - cy) * torch.sin(theta)
    wave = torch.sin(2 * math.pi * frequency * along + uniform(0, 2 * math.pi, 1, 1))
    wave = torch.where(square[:, None, None] == 1, torch.sign(wave), wave)
    window = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    pattern = (uniform(0.5, 1.2, 1, 1) * window * wave)[:, None]
    flip = torch.where(torch.rand(count, 3, 1, 1, generator=generator) < 0.2, -1.0, 1.0)
    colour = uniform(0.3, 1.0, 3, 1, 1) * flip
    background = torch.randn(count, 3, 1, 1, generator=generator) * 0.3
    noise = torch.randn(count, 3, size, size, generator=generator) * uniform(0.1, 0.4, 1, 1, 1)
    return background + colour * pattern + noise, labels


def train(seed: int = SEED) -> nn.Module:
    """The network trained on fresh ``gratings`` batches; returned in eval mode."""
    torch.manual_seed(seed)
    net = fx.MobileNetV3Like(BLOCKS, stem=16, classes=CLASSES, last=480)
    net = net.to(memory_format=torch.channels_last)  # about twice as fast on CPU
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=STEPS, pct_start=0.25)
    generator = torch.Generator().manual_seed(seed + 1)
    net.train()
    for step in range(STEPS):
        images, labels = gratings(BATCH, generator)
        loss = nn.functional.cross_entropy(net(images.contiguous(memory_format=torch.channels_last)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 200 == 0:
            print(f"step {step + 1}/{STEPS}: loss {loss.item():.3f}", flush=True)
    return net.to(memory_format=torch.contiguous_format).eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.reshape(len(labels), -1).argmax(axis=1) == labels))


def write_readme(out: Path, scores: dict[str, float]) -> None:
    (out / "README.md").write_text(
        "# Bundled example: MobileNetV3-style classifier, aimet-onnx per-tensor config\n\n"
        "Generated by `make_example.py` (its docstring says what it builds); do not edit by hand.\n\n"
        f"A MobileNetV3-Large-like network (64x64 input, {CLASSES} classes, a 672-channel depthwise layer)\n"
        f"trained for {STEPS} steps on a procedural task (oriented gratings: 10 orientations x 5 periods x\n"
        "sine/square, random colour, position and noise), BatchNorm folded by aimet-onnx, quantized with\n"
        "aimet-onnx under `quantsim_config.json` (per-tensor symmetric weights, unsigned_symmetric, float\n"
        "bias, Conv+HardSwish supergroup) and exported with 1.0.0 encodings.\n\n"
        "| held-out images | float top-1 | QuantSim top-1 |\n|---|---|---|\n"
        f"| `inputs.npy` ({SAVED}, classes in `labels.npy`) | {scores['float_saved']:.1%} "
        f"| {scores['sim_saved']:.1%} |\n"
        f"| {HELD_OUT} generated the same way | {scores['float_all']:.1%} | {scores['sim_all']:.1%} |\n\n"
        f"Chance is {1 / CLASSES:.0%}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: here)")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    net = train()
    train_seconds = time.perf_counter() - start
    config_path = out / "quantsim_config.json"
    config_path.write_text(json.dumps(fx.user_per_tensor_config(), indent=2) + "\n")
    model = fx.torch_to_onnx(net, INPUT_SHAPE)
    calibration, _ = gratings(CALIBRATION, torch.Generator().manual_seed(SEED + 2))
    sim = fx.quantize(model, config_path, list(calibration.numpy()[:, None]))
    fx.export(sim, out, versions=("1.0.0",))
    images, labels = gratings(HELD_OUT, torch.Generator().manual_seed(SEED + 3))
    images, labels = images.numpy(), labels.numpy()
    np.save(out / "inputs.npy", images[:SAVED])
    np.save(out / "labels.npy", labels[:SAVED])
    with torch.no_grad():
        float_logits = net(torch.from_numpy(images)).numpy()
    sim_logits = fx.sim_outputs(sim, images)
    scores = {
        "float_saved": accuracy(float_logits[:SAVED], labels[:SAVED]),
        "sim_saved": accuracy(sim_logits[:SAVED], labels[:SAVED]),
        "float_all": accuracy(float_logits, labels),
        "sim_all": accuracy(sim_logits, labels),
    }
    write_readme(out, scores)
    sizes = {p.name: p.stat().st_size for p in sorted(out.glob("model.*"))}
    print(f"wrote {out} in {time.perf_counter() - start:.0f}s (training {train_seconds:.0f}s): {sizes}")
    print("top-1 " + ", ".join(f"{k} {v:.1%}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
