"""Build the AIMET ground-truth fixtures in tests/fixtures/aimet/ (needs torch + aimet-onnx).

Each case is a small torch model exported to ONNX, BN-folded, quantized with aimet-onnx's
``QuantizationSimModel`` under a config written next to it, calibrated on seeded data and exported as
``model.onnx`` (+ ``model.data``) with encodings in 0.6.1, 1.0.0 and 2.0.0. AIMET's own sim results on
``inputs.npy`` are saved as ``sim_output.npy`` and ``sim_tensors.npz`` (every enabled quantizer's output,
activations and params, keyed by the original tensor name). Models have batch 1; sample ``i`` of
``inputs.npy`` is fed as ``inputs[i:i+1]`` and results are stacked along a new first axis.

The helpers here are reused by tests/test_aimet_interop.py and the examples.

    /work/venv/bin/python scripts/make_aimet_fixtures.py [--out tests/fixtures/aimet]
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

VERSIONS = ("0.6.1", "1.0.0", "2.0.0")
ROOT = Path(__file__).resolve().parents[1]


def encodings_filename(version: str) -> str:
    """1.0.0 (aimet-onnx's default) is ``model.encodings``; the others carry their version."""
    return "model.encodings" if version == "1.0.0" else f"model-{version}.encodings"


# ----------------------------------------------------------------------------------------------- models


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeezed: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.reduce(self.pool(x)))
        return x * nn.functional.hardsigmoid(self.expand(s))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise, optional SE, 1x1 project, residual when shapes allow."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, se: bool, act: type):
        super().__init__()
        self.expand = nn.Sequential(conv_bn(cin, hidden, 1), act())
        self.depthwise = nn.Sequential(conv_bn(hidden, hidden, kernel, stride, groups=hidden), act())
        self.se = SqueezeExcite(hidden, max(8, hidden // 4)) if se else nn.Identity()
        self.project = conv_bn(hidden, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3Like(nn.Module):
    """Stem, inverted-residual ``blocks`` (cin, hidden, cout, kernel, stride, se, act), optional 1x1 ``last``
    conv + HardSwish, global average pool, Linear head."""

    def __init__(self, blocks: list[tuple], stem: int, classes: int, last: int | None = None):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, stem, 3, 2), nn.Hardswish())
        self.blocks = nn.Sequential(*(InvertedResidual(*b) for b in blocks))
        width = blocks[-1][2]
        self.last = nn.Sequential(conv_bn(width, last, 1), nn.Hardswish()) if last else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(last or width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.last(self.blocks(self.stem(x)))), 1))


class MixNet(nn.Module):
    """Conv/Tanh/MaxPool feeding a Gemm branch and a MatMul+Add branch, joined by Concat."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 6 * 6, 16)
        self.w = nn.Parameter(torch.randn(6 * 6 * 6, 12) * 0.08)
        self.b = nn.Parameter(torch.randn(12) * 0.1)
        self.head = nn.Linear(28, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(torch.tanh(self.conv(x))), 1)
        joined = torch.cat([torch.tanh(self.fc(x)), torch.relu(x @ self.w + self.b)], dim=1)
        return torch.tanh(self.head(joined))


class WideConvNet(nn.Module):
    """Convolutions with long reductions (K = 144 and 256), where onnxruntime's NCHWc rewrite changes the
    float summation order of the sim: the case that pins the sim engine's unfused session."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 256, 3, padding=1)
        self.conv3 = nn.Conv2d(256, 64, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(torch.tanh(self.conv2(torch.relu(self.conv1(x)))))
        return self.head(torch.flatten(self.pool(x), 1))


def randomize_batchnorms(module: nn.Module, rng: np.random.Generator) -> None:
    """Give every BN random affine params and running stats, so folding spreads the channel ranges."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            with torch.no_grad():
                bn.weight.copy_(torch.from_numpy(rng.uniform(0.3, 1.5, c).astype(np.float32)))
                bn.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.2, c).astype(np.float32)))
                bn.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.3, c).astype(np.float32)))
                # log-uniform variance: some channels end up with much larger folded weights than others
                bn.running_var.copy_(torch.from_numpy(np.exp(rng.uniform(-2.0, 2.5, c)).astype(np.float32)))


def mobilenet_block_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    blocks = [
        (16, 32, 16, 3, 1, True, nn.ReLU),
        (16, 48, 24, 3, 2, False, nn.Hardswish),
    ]
    net = MobileNetV3Like(blocks, stem=16, classes=10)
    randomize_batchnorms(net, np.random.default_rng(seed))
    return net.eval()


def mix_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MixNet().eval()


def wide_conv_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return WideConvNet().eval()


# ------------------------------------------------------------------------------------------------ AIMET


def torch_to_onnx(module: nn.Module, input_shape: tuple[int, ...], fold_bn: bool = True) -> onnx.ModelProto:
    """TorchScript ONNX export (opset 17, input ``input``, output ``output``), BN folded the AIMET way."""
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(input_shape),), buffer, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"],
        )  # fmt: skip
    model = onnx.load_from_string(buffer.getvalue())
    if fold_bn:
        fold_all_batch_norms_to_weight(model)
    return model


def quantsim_config(
    per_channel: bool,
    param_symmetric: bool = True,
    unsigned_symmetric: bool = False,
    supergroups: list[list[str]] | None = None,
) -> dict:
    """An aimet quantsim config (booleans are the strings "True"/"False", as AIMET requires)."""

    def flag(value: bool) -> str:
        return "True" if value else "False"

    groups = supergroups if supergroups is not None else [["Conv", "Relu"], ["Gemm", "Relu"], ["Add", "Relu"]]
    per_channel_ops = {op: {"per_channel_quantization": "True"} for op in ("Conv", "Gemm", "MatMul")}
    return {
        "defaults": {
            "ops": {"is_output_quantized": "True"},
            "params": {"is_quantized": "True", "is_symmetric": flag(param_symmetric)},
            "strict_symmetric": "False",
            "unsigned_symmetric": flag(unsigned_symmetric),
            "per_channel_quantization": "False",
        },
        "params": {"bias": {"is_quantized": "False"}},
        "op_type": per_channel_ops if per_channel else {},
        "supergroup_pass_list": ["MatmulAdd"],
        "supergroups": [{"op_list": g} for g in groups],
        "model_input": {"is_input_quantized": "True"},
        "model_output": {},
    }


def user_per_tensor_config() -> dict:
    """The per-tensor config users report: unsigned symmetric, no per-channel, Conv+HardSwish fused."""
    return quantsim_config(
        per_channel=False,
        unsigned_symmetric=True,
        supergroups=[["Conv", "Relu"], ["Conv", "HardSwish"], ["Gemm", "Relu"], ["Add", "Relu"]],
    )


def quantize(
    model: onnx.ModelProto, config_path: Path, calibration: list[np.ndarray], input_name: str = "input"
):
    """A calibrated aimet-onnx ``QuantizationSimModel`` (min/max scheme, int8 weights and activations)."""
    from aimet_onnx.quantsim import QuantizationSimModel

    sim = QuantizationSimModel(copy.deepcopy(model), config_file=str(config_path))
    sim.compute_encodings([{input_name: x} for x in calibration])
    return sim


def export(sim, folder: Path, versions: tuple[str, ...] = VERSIONS) -> None:
    """``model.onnx`` + ``model.data`` once, encodings once per version (named by ``encodings_filename``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sim.export(str(folder), "model", export_model=True, encoding_version="1.0.0")
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore", DeprecationWarning)  # 0.6.1 is deprecated but still what users have
        for version in versions:
            sim.export(tmp, version, export_model=False, encoding_version=version)
            (Path(tmp) / f"{version}.encodings").replace(folder / encodings_filename(version))


def sim_outputs(sim, inputs: np.ndarray) -> np.ndarray:
    """AIMET's sim session outputs for each batch-1 sample, stacked: shape ``(N, *output_shape)``."""
    return np.stack([sim.session.run(None, {"input": inputs[i : i + 1]})[0] for i in range(len(inputs))])


def sim_tensors(sim, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Output of every enabled quantizer in AIMET's sim graph, keyed by the tensor it quantizes.

    Activations are stacked per sample like ``sim_outputs``; params are stored once.
    """
    from aimet_onnx.utils import OrtInferenceSession

    proto = copy.deepcopy(sim.model.model)
    quantized: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type != "QcQuantizeOp":
            continue
        name = node.input[0]
        quantizer = sim.qc_quantize_op_dict.get(name)
        if quantizer is not None and quantizer.enabled:
            quantized[name] = node.output[0]
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=v) for v in quantized.values() if v not in present)
    session = OrtInferenceSession(proto, sim.providers, session_options=sim._ort_session_options)
    names = list(quantized)
    per_sample = [
        session.run([quantized[n] for n in names], {"input": inputs[i : i + 1]}) for i in range(len(inputs))
    ]
    params = set(sim.param_names)
    return {  # weights are the same for every sample: stored once
        n: per_sample[0][k] if n in params else np.stack([sample[k] for sample in per_sample])
        for k, n in enumerate(names)
    }


# ------------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    build: Callable[[int], nn.Module]
    input_shape: tuple[int, ...]
    config: Callable[[], dict]
    samples: int = 3


CASES = (
    Case(
        "mbv3_pt_user",
        "MobileNetV3-style blocks, per-tensor symmetric weights, unsigned_symmetric, Conv+HardSwish group",
        mobilenet_block_net, (1, 3, 24, 24), user_per_tensor_config,
    ),
    Case(
        "mbv3_pc_sym",
        "MobileNetV3-style blocks, per-channel symmetric weights (Conv, Gemm), default-like supergroups",
        mobilenet_block_net, (1, 3, 24, 24), lambda: quantsim_config(per_channel=True),
    ),
    Case(
        "mix_pt_asym",
        "Conv/Tanh/MaxPool/Gemm/MatMul+Add/Concat net, per-tensor asymmetric weights",
        mix_net, (1, 2, 12, 12), lambda: quantsim_config(per_channel=False, param_symmetric=False),
    ),
    Case(
        "mix_pc_asym",
        "Conv/Tanh/MaxPool/Gemm/MatMul+Add/Concat net, per-channel asymmetric weights (Conv, Gemm, MatMul)",
        mix_net, (1, 2, 12, 12), lambda: quantsim_config(per_channel=True, param_symmetric=False),
    ),
    Case(
        "wide_pt_sym",
        "Conv 3->16->256 (3x3) -> 64 (1x1), Tanh, avg pool, Gemm; per-tensor symmetric weights",
        wide_conv_net, (1, 3, 8, 8), lambda: quantsim_config(per_channel=False), samples=8,
    ),
)  # fmt: skip
CASES_BY_NAME = {c.name: c for c in CASES}


def sample_data(shape: tuple[int, ...], count: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """``count`` batch-1 samples of ``shape`` stacked along axis 0 (float32, seeded normal)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, *shape[1:])) * spread).astype(np.float32)


def quantize_case(case: Case, folder: Path, seed: int = 0, versions: tuple[str, ...] = VERSIONS):
    """Write ``case``'s config, quantize its model with aimet-onnx, export into ``folder``; return the sim."""
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "quantsim_config.json"
    config_path.write_text(json.dumps(case.config(), indent=2) + "\n")
    model = torch_to_onnx(case.build(seed), case.input_shape)
    calibration = list(sample_data(case.input_shape, 4, seed + 1)[:, None])
    sim = quantize(model, config_path, calibration)
    export(sim, folder, versions)
    return sim


def cpu_isa() -> list[str]:
    """The SIMD levels onnxruntime's MLAS kernels pick from: float results can differ between them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next(line for line in lines if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({"avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile"} & set(flags.split()))


def make_case(case: Case, folder: Path, seed: int = 0, versions: tuple[str, ...] = VERSIONS) -> dict:
    """Build, quantize and export ``case`` into a fresh ``folder`` with AIMET's results; returns meta.json."""
    import aimet_onnx
    import onnxruntime

    if folder.exists():
        shutil.rmtree(folder)
    sim = quantize_case(case, folder, seed, versions)
    # evaluation data is a little wider than calibration so that clamping at min/max is exercised
    inputs = sample_data(case.input_shape, case.samples, seed + 2, spread=1.3)
    np.save(folder / "inputs.npy", inputs)
    np.save(folder / "sim_output.npy", sim_outputs(sim, inputs))
    np.savez_compressed(folder / "sim_tensors.npz", **sim_tensors(sim, inputs))
    meta = {
        "case": case.name,
        "description": case.description,
        "seed": seed,
        "input_shape": list(case.input_shape),
        "encodings": {v: encodings_filename(v) for v in versions},
        "aimet_onnx": aimet_onnx.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "machine": platform.machine(),
        "cpu_isa": cpu_isa(),
        "quant_scheme": "min_max",
        "calibration": "4 batch-1 samples, standard normal, seed+1",
        "inputs": "batch-1 samples stacked on axis 0, standard normal * 1.3, seed+2",
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def write_readme(out: Path) -> None:
    rows = "\n".join(f"| `{c.name}` | {c.description} | {'x'.join(map(str, c.input_shape))} |" for c in CASES)
    (out / "README.md").write_text(
        "# AIMET ground-truth fixtures\n\n"
        "Generated by `scripts/make_aimet_fixtures.py` with aimet-onnx (version in each `meta.json`).\n"
        "Do not edit by hand; re-run the script.\n\n"
        "| case | model and config | input |\n|---|---|---|\n" + rows + "\n\n"
        "Files per case: `model.onnx` + `model.data` (AIMET export, float weights), `model.encodings`\n"
        "(1.0.0), `model-0.6.1.encodings`, `model-2.0.0.encodings`, `quantsim_config.json`, `inputs.npy`\n"
        "(N batch-1 samples on axis 0), `sim_output.npy` (AIMET `sim.session` output per sample, stacked),\n"
        "`sim_tensors.npz` (output of every enabled AIMET quantizer keyed by the original tensor name:\n"
        "activations stacked per sample, fake-quantized weights once), `meta.json`.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "aimet")
    parser.add_argument("--case", action="append", choices=sorted(CASES_BY_NAME), help="only these cases")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.case or [c.name for c in CASES]:
        make_case(CASES_BY_NAME[name], args.out / name)
        print(f"wrote {args.out / name}")
    write_readme(args.out)


if __name__ == "__main__":
    main()
