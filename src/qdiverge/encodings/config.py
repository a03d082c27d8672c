"""AIMET quantsim config JSON: parsing (aimet-onnx's schema) and supergroup matching.

The config decides where the sim put quantizers. qdiverge reads quantizers from the encodings, so it
uses the config for what the encodings cannot say: which tensors sit *inside* a supergroup (no
quantizer in the sim, fused on the target) and which op types are per-channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qdiverge.errors import InputError
from qdiverge.fileio import read_json
from qdiverge.loading.model import Model, Node

REQUIRED_SECTIONS = ("defaults", "params", "op_type", "supergroups", "model_input", "model_output")
GRAPH_PASSES = ("LayerNormalization", "RMSNormalization", "MatmulAdd", "MaskedSoftmax")
_OP_FLAGS = ("is_input_quantized", "is_output_quantized", "is_symmetric")
_PARAM_FLAGS = ("is_quantized", "is_symmetric")


@dataclass(frozen=True)
class ParamConfig:
    is_quantized: bool | None = None
    is_symmetric: bool | None = None


@dataclass(frozen=True)
class Kernel:
    """One ``supported_kernels`` entry: (bitwidth, dtype) for activations and, optionally, params."""

    activation: tuple[int, str]
    param: tuple[int, str] | None = None


@dataclass(frozen=True)
class OpConfig:
    is_input_quantized: bool | None = None
    is_output_quantized: bool | None = None
    is_symmetric: bool | None = None
    per_channel_quantization: bool | None = None
    params: Mapping[str, ParamConfig] = field(default_factory=lambda: MappingProxyType({}))
    encoding_constraints: tuple[float, float | None] | None = None
    supported_kernels: tuple[Kernel, ...] = ()


@dataclass(frozen=True)
class QuantsimConfig:
    path: Path
    defaults_ops: OpConfig
    defaults_params: ParamConfig
    strict_symmetric: bool
    unsigned_symmetric: bool
    per_channel_quantization: bool
    hw_version: str | None
    supported_kernels: tuple[Kernel, ...]
    params: Mapping[str, ParamConfig]
    op_type: Mapping[str, OpConfig]
    supergroups: tuple[tuple[str, ...], ...]
    supergroup_pass_list: tuple[str, ...]
    model_input_quantized: bool | None
    model_output_quantized: bool | None

    def per_channel_for(self, op_type: str) -> bool:
        """Whether the sim quantizes ``op_type``'s weights per channel (op_type overrides defaults)."""
        own = self.op_type.get(op_type, OpConfig()).per_channel_quantization
        return self.per_channel_quantization if own is None else own


class _Parser:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> InputError:
        return InputError(f"{self.path}: {key}: {problem}")

    def obj(self, value: Any, key: str, allowed: tuple[str, ...] | None = None) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected an object, got {type(value).__name__}")
        if allowed is not None:
            unknown = [k for k in value if k not in allowed]
            if unknown:
                raise self.fail(f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(allowed)})")
        return value

    def flag(self, value: Any, key: str) -> bool:
        # the schema wants the strings "True"/"False"; a JSON bool is refused like AIMET refuses it
        if value not in ("True", "False") or isinstance(value, bool):
            raise self.fail(key, f'expected the string "True" or "False", got {value!r}')
        return value == "True"

    def flags(self, value: Any, key: str, names: tuple[str, ...]) -> dict[str, bool]:
        return {k: self.flag(v, f"{key}.{k}") for k, v in self.obj(value, key, names).items()}

    def param(self, value: Any, key: str) -> ParamConfig:
        return ParamConfig(**self.flags(value, key, _PARAM_FLAGS))

    def params(self, value: Any, key: str) -> Mapping[str, ParamConfig]:
        items = self.obj(value, key)
        return MappingProxyType({k: self.param(v, f"{key}.{k}") for k, v in items.items()})

    def kernels(self, value: Any, key: str) -> tuple[Kernel, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, "expected a non-empty list")
        out = []
        for i, item in enumerate(value):
            entry = self.obj(item, f"{key}[{i}]", ("activation", "param"))
            if "activation" not in entry:
                raise self.fail(f"{key}[{i}]", "missing 'activation'")
            act = self.kernel_side(entry["activation"], f"{key}[{i}].activation")
            par = self.kernel_side(entry["param"], f"{key}[{i}].param") if "param" in entry else None
            out.append(Kernel(act, par))
        return tuple(out)

    def kernel_side(self, value: Any, key: str) -> tuple[int, str]:
        side = self.obj(value, key, ("bitwidth", "dtype"))
        bitwidth, dtype = side.get("bitwidth"), side.get("dtype")
        if bitwidth not in (4, 8, 16, 32) or isinstance(bitwidth, bool):
            raise self.fail(f"{key}.bitwidth", f"expected 4, 8, 16 or 32, got {bitwidth!r}")
        if dtype not in ("int", "float"):
            raise self.fail(f"{key}.dtype", f'expected "int" or "float", got {dtype!r}')
        return bitwidth, dtype

    def op(self, value: Any, key: str) -> OpConfig:
        allowed = (
            *_OP_FLAGS,
            "per_channel_quantization",
            "params",
            "supported_kernels",
            "encoding_constraints",
        )
        entry = self.obj(value, key, allowed)
        flags = {
            k: self.flag(entry[k], f"{key}.{k}")
            for k in (*_OP_FLAGS, "per_channel_quantization")
            if k in entry
        }
        constraints = None
        if "encoding_constraints" in entry:
            c = self.obj(entry["encoding_constraints"], f"{key}.encoding_constraints", ("min", "max"))
            lo, hi = c.get("min"), c.get("max")
            for name, v in (("min", lo), ("max", hi)):
                if (v is not None or name == "min") and (
                    isinstance(v, bool) or not isinstance(v, int | float)
                ):
                    raise self.fail(f"{key}.encoding_constraints.{name}", f"expected a number, got {v!r}")
            constraints = (float(lo), None if hi is None else float(hi))
        return OpConfig(
            **flags,
            params=self.params(entry.get("params", {}), f"{key}.params"),
            encoding_constraints=constraints,
            supported_kernels=self.kernels(entry["supported_kernels"], f"{key}.supported_kernels")
            if "supported_kernels" in entry
            else (),
        )

    def string_list(self, value: Any, key: str) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "expected a list of strings")
        return tuple(value)


def read_quantsim_config(path: str | Path) -> QuantsimConfig:
    """Parse and check an AIMET quantsim config; ``InputError`` names the offending key."""
    path = Path(path)
    data, _ = read_json(path, "quantsim config")
    p = _Parser(path)
    top = p.obj(data, "config", (*REQUIRED_SECTIONS, "supergroup_pass_list"))
    missing = [k for k in REQUIRED_SECTIONS if k not in top]
    if missing:
        raise p.fail(missing[0], "required section is missing")
    defaults = p.obj(
        top["defaults"],
        "defaults",
        (
            "ops",
            "params",
            "strict_symmetric",
            "unsigned_symmetric",
            "per_channel_quantization",
            "supported_kernels",
            "hw_version",
        ),
    )
    for key in ("ops", "params"):
        if key not in defaults:
            raise p.fail(f"defaults.{key}", "required section is missing")
    hw = defaults.get("hw_version")
    if hw is not None and not isinstance(hw, str):
        raise p.fail("defaults.hw_version", f"expected a string, got {hw!r}")
    supergroups = []
    if not isinstance(top["supergroups"], list):
        raise p.fail("supergroups", "expected a list")
    for i, group in enumerate(top["supergroups"]):
        ops = p.string_list(
            p.obj(group, f"supergroups[{i}]", ("op_list",)).get("op_list"), f"supergroups[{i}].op_list"
        )
        if len(ops) < 2:
            raise p.fail(f"supergroups[{i}].op_list", "needs at least two op types")
        supergroups.append(ops)
    passes = p.string_list(top.get("supergroup_pass_list", []), "supergroup_pass_list")
    for name in passes:
        if name not in GRAPH_PASSES:
            raise p.fail(
                "supergroup_pass_list", f"unknown graph pass {name!r} (known: {', '.join(GRAPH_PASSES)})"
            )
    model_in = p.flags(top["model_input"], "model_input", ("is_input_quantized",))
    model_out = p.flags(top["model_output"], "model_output", ("is_output_quantized",))
    return QuantsimConfig(
        path=path,
        defaults_ops=OpConfig(**p.flags(defaults["ops"], "defaults.ops", _OP_FLAGS)),
        defaults_params=p.param(defaults["params"], "defaults.params"),
        strict_symmetric=p.flag(defaults.get("strict_symmetric", "False"), "defaults.strict_symmetric"),
        unsigned_symmetric=p.flag(defaults.get("unsigned_symmetric", "False"), "defaults.unsigned_symmetric"),
        per_channel_quantization=p.flag(
            defaults.get("per_channel_quantization", "False"), "defaults.per_channel_quantization"
        ),
        hw_version=hw,
        supported_kernels=p.kernels(defaults["supported_kernels"], "defaults.supported_kernels")
        if "supported_kernels" in defaults
        else (),
        params=p.params(top["params"], "params"),
        op_type=MappingProxyType(
            {k: p.op(v, f"op_type.{k}") for k, v in p.obj(top["op_type"], "op_type").items()}
        ),
        supergroups=tuple(supergroups),
        supergroup_pass_list=passes,
        model_input_quantized=model_in.get("is_input_quantized"),
        model_output_quantized=model_out.get("is_output_quantized"),
    )


def _excluded(node: Node, model: Model) -> bool:
    """3-D and depthwise convolutions never join a supergroup (``_check_if_conv3d_or_depthwise_conv``)."""
    if node.op_type not in ("Conv", "ConvTranspose") or len(node.inputs) < 2:
        return False
    x_shape, w_shape = model.shapes.get(node.inputs[0]), model.shapes.get(node.inputs[1])
    if (x_shape and len(x_shape) == 5) or (w_shape and len(w_shape) == 5):
        return True
    group = node.attr("group", 1) or 1
    if group == 1 or w_shape is None:
        return False
    return w_shape[1] == 1 if node.op_type == "Conv" else w_shape[0] == group


def _next_ops(node: Node, model: Model) -> list[Node]:
    seen: dict[int, Node] = {}
    for out in node.outputs:
        for consumer in model.consumers.get(out, []):
            seen.setdefault(consumer.index, consumer)
    return list(seen.values())


def _match_chain(node: Node, pattern: tuple[str, ...], model: Model) -> list[Node] | None:
    """A single-consumer chain of ``pattern`` op types starting at ``node`` (no branch before the last)."""
    chain = [node]
    for op_type in pattern[1:]:
        following = _next_ops(chain[-1], model)
        if len(following) != 1 or following[0].op_type != op_type:
            return None
        chain.append(following[0])
    return chain


def _matmul_add(node: Node, model: Model) -> list[Node] | None:
    """AIMET's MatmulAdd pass: MatMul with a constant weight whose only consumer adds a 1-D constant."""
    if node.op_type != "MatMul" or len(node.inputs) < 2 or not model.is_constant(node.inputs[1]):
        return None
    following = model.consumers.get(node.outputs[0], [])
    if len(following) != 1 or following[0].op_type != "Add":
        return None
    add = following[0]
    other = [i for i in add.inputs if i != node.outputs[0]]
    if len(other) == 1 and model.is_constant(other[0]) and len(model.initializers.shape(other[0])) == 1:
        return [node, add]
    return None


def supergroup_internal_tensors(config: QuantsimConfig, model: Model) -> dict[str, tuple[str, ...]]:
    """Tensors the sim leaves unquantized because they sit inside a matched supergroup -> the op chain.

    Matching follows aimet-onnx's ``GraphSearcher``: graph passes first (only ``MatmulAdd`` is
    recognised), then op lists, longest first, each start op in graph order; a match must not share
    an op with an earlier one, and the depthwise/3-D and graph-pass exclusions apply to the first op
    only, as in AIMET. Every op of a match but the last loses its output quantizer.
    """
    matches: list[list[Node]] = []
    if "MatmulAdd" in config.supergroup_pass_list:
        matches += [m for n in model.nodes if (m := _matmul_add(n, model))]
    by_pass = {n.index for m in matches for n in m}
    taken: set[int] = set()
    for pattern in sorted(config.supergroups, key=len, reverse=True):
        for node in model.nodes:
            if node.op_type != pattern[0] or _excluded(node, model) or node.index in by_pass:
                continue
            chain = _match_chain(node, pattern, model)
            if chain and not any(n.index in taken for n in chain):
                taken.update(n.index for n in chain)
                matches.append(chain)
    internal: dict[str, tuple[str, ...]] = {}
    for chain in matches:
        names = tuple(n.name for n in chain)
        for node in chain[:-1]:
            internal.update({out: names for out in node.outputs if out})
    return internal
