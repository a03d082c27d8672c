"""ONNX QDQ models <-> ``EncodingSet``.

Reading takes a model with QuantizeLinear/DequantizeLinear pairs (onnxruntime's QDQ format or AIMET's
``to_onnx_qdq``: Q output ``<t>_q``, DQ output ``<t>_updated`` for activations and ``<param>_qdq``
for params), turns each pair into an encoding of the tensor it quantizes, and returns the float
graph with the pairs removed and the original names back. ``encodings.qdq_writer`` does the inverse.

ONNX convention: ``real = (q - zero_point) * scale`` with ``q`` in the storage dtype, so the
unsigned-domain offset is ``qmin(dtype) - zero_point``. An fp16 encoding is written as a Cast pair
whose middle tensor is ``<t>_fp16``; only that naming is read back as an encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdiverge.encodings.schema import INT_BITWIDTHS, Encoding, EncodingSet
from qdiverge.errors import InputError, UnsupportedError

QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
MS_DOMAIN = "com.microsoft"
FP16_SUFFIX = "_fp16"
BIAS_OPS = ("Conv", "ConvTranspose", "Gemm")
_DQ_SUFFIXES = ("_qdq", "_updated", "_DequantizeLinear_Output", "_dequantized")
ONNX_INT_TYPES = {
    (4, True): TensorProto.INT4,
    (4, False): TensorProto.UINT4,
    (8, True): TensorProto.INT8,
    (8, False): TensorProto.UINT8,
    (16, True): TensorProto.INT16,
    (16, False): TensorProto.UINT16,
    (32, True): TensorProto.INT32,
}
_TYPE_BITS = {t: key for key, t in ONNX_INT_TYPES.items()}


def encoding_from_zero_point(
    name: str,
    bitwidth: int,
    signed: bool,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    *,
    axis: int | None = None,
    block_size: int | None = None,
    is_param: bool = False,
) -> Encoding:
    """An ``Encoding`` from ONNX-style ``scale``/``zero_point`` (2.0.0 JSON entries and Q/DQ nodes).

    Blocked scales stay in ONNX's layout (``block_axis`` set, channel axis left to binding).
    Raises ``ValueError`` with the problem; callers add the file and entry.
    """
    if bitwidth not in INT_BITWIDTHS:
        raise ValueError(f"bitwidth {bitwidth} not in 2..32")
    scale = np.asarray(scale, dtype=np.float64)
    zp = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point, dtype=np.float64)
    try:
        zp = np.broadcast_to(zp, scale.shape).copy()
    except ValueError:
        raise ValueError(f"zero point shape {zp.shape} does not match scale shape {scale.shape}") from None
    offset = (-(1 << (bitwidth - 1)) if signed else 0) - zp
    # AIMET's own reload treats signed with zero point -1 as strict symmetric
    symmetric = signed and (bool(np.all(zp == 0)) or bool(np.all(zp == -1)))
    common = dict(signed=signed, symmetric=symmetric, is_param=is_param)
    if block_size:
        return Encoding(name, bitwidth, scale, offset, block_size=block_size, block_axis=axis, **common)
    if scale.ndim == 0 or (scale.size == 1 and axis is None):
        return Encoding(name, bitwidth, scale.reshape(1), offset.reshape(1), **common)
    if scale.ndim != 1:
        raise ValueError(f"per-channel scale must be 1-D, got shape {scale.shape}")
    return Encoding(name, bitwidth, scale, offset, axis=axis, **common)


def has_qdq(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in (QUANTIZE, DEQUANTIZE) for n in proto.graph.node)


@dataclass
class _Pair:
    """One quantized tensor: its float source, the tensors that read the quantized value, the nodes."""

    source: str
    outputs: list[str]
    encoding: Encoding
    nodes: list[onnx.NodeProto] = field(default_factory=list)


class _QdqReader:
    def __init__(self, proto: onnx.ModelProto, source: str):
        self.proto, self.src = proto, source
        graph = proto.graph
        self.consts: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = node.attribute[0].t
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
        self.pairs: dict[str, _Pair] = {}
        self.new_inits: list[TensorProto] = []

    def const(self, node: onnx.NodeProto, index: int, what: str) -> TensorProto | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        tensor = self.consts.get(node.input[index])
        if tensor is None:
            raise InputError(
                f"{self.src}: {node.op_type} {node.name!r}: {what} {node.input[index]!r} is not a constant"
            )
        return tensor

    def params(
        self, node: onnx.NodeProto, elem_type: int | None
    ) -> tuple[np.ndarray, np.ndarray | None, int, dict]:
        scale = numpy_helper.to_array(self.const(node, 1, "scale")).astype(np.float64)
        zp_t = self.const(node, 2, "zero point")
        zp = numpy_helper.to_array(zp_t).astype(np.float64) if zp_t is not None else None
        elem = zp_t.data_type if zp_t is not None else elem_type or TensorProto.UINT8
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return scale, zp, elem, attrs

    def encoding(self, name: str, node: onnx.NodeProto, elem_type: int | None = None) -> Encoding:
        scale, zp, elem, attrs = self.params(node, elem_type)
        if elem not in _TYPE_BITS:
            raise UnsupportedError(
                f"{self.src}: {node.op_type} {node.name!r} uses {TensorProto.DataType.Name(elem)}; only"
                " int4/uint4/int8/uint8/int16/uint16/int32 are supported"
            )
        bits, signed = _TYPE_BITS[elem]
        block = attrs.get("block_size") or None
        axis = (
            attrs.get("axis", 1) if scale.ndim >= 1 and (scale.size > 1 or "axis" in attrs or block) else None
        )
        try:
            return encoding_from_zero_point(name, bits, signed, scale, zp, axis=axis, block_size=block)
        except ValueError as exc:
            raise InputError(f"{self.src}: {node.op_type} {node.name!r}: {exc}") from None

    def read(self) -> EncodingSet:
        for node in self.proto.graph.node:
            if node.op_type == DEQUANTIZE:
                self._dequantize(node)
            elif node.op_type == QUANTIZE and not all(
                c.op_type == DEQUANTIZE for c in self.consumers.get(node.output[0], [])
            ):
                raise UnsupportedError(
                    f"{self.src}: QuantizeLinear {node.name!r} output {node.output[0]!r} feeds a node other"
                    " than DequantizeLinear (integer graph, not QDQ)"
                )
            elif _is_fp16_cast(node):
                self._cast_pair(node)
        encset = EncodingSet(source=self.src, version="qdq")
        for pair in self.pairs.values():
            key = self._key(pair)
            enc = replace(pair.encoding, name=key)
            target = encset.int32_bias if enc.bitwidth == 32 else encset.activations
            target[key] = replace(enc, is_param=enc.bitwidth == 32)
        return encset

    def _add(self, pair: _Pair) -> None:
        old = self.pairs.get(pair.source)
        if old is None:
            self.pairs[pair.source] = pair
            return
        a, b = old.encoding, pair.encoding
        if not (
            a.bitwidth == b.bitwidth
            and a.signed == b.signed
            and np.array_equal(a.scale, b.scale)
            and np.array_equal(a.offset, b.offset)
        ):
            raise InputError(
                f"{self.src}: tensor {pair.source!r} is quantized twice with different encodings"
            )
        old.outputs += pair.outputs
        old.nodes += [n for n in pair.nodes if all(n is not m for m in old.nodes)]

    def _dequantize(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        src = self.producer.get(x)
        if src is not None and src.op_type == QUANTIZE:
            enc = self.encoding(src.input[0], node)
            q_enc = self.encoding(src.input[0], src)
            if not (np.array_equal(enc.scale, q_enc.scale) and np.array_equal(enc.offset, q_enc.offset)):
                raise InputError(
                    f"{self.src}: Q {src.name!r} and DQ {node.name!r} disagree on scale/zero point"
                )
            self._add(_Pair(src.input[0], [node.output[0]], enc, [src, node]))
            return
        codes_t = self.consts.get(x)
        if codes_t is None or codes_t.data_type not in _TYPE_BITS:
            raise UnsupportedError(
                f"{self.src}: DequantizeLinear {node.name!r} reads {x!r}, which is neither a QuantizeLinear"
                " output nor an integer constant"
            )
        name = self._restored_name(node.output[0], x)
        enc = self.encoding(name, node, codes_t.data_type)
        codes = numpy_helper.to_array(codes_t).astype(np.int64)
        self.new_inits.append(numpy_helper.from_array(_onnx_dequantize(codes, node, enc), name))
        self._add(_Pair(name, [node.output[0]], enc, [node]))

    def _cast_pair(self, first: onnx.NodeProto) -> None:
        enc = Encoding(first.input[0], 16, np.ones(1), np.zeros(1), dtype="float")
        seconds = self.consumers.get(first.output[0], [])
        if not seconds or not all(_cast_to(c) == TensorProto.FLOAT for c in seconds):
            raise InputError(f"{self.src}: fp16 Cast {first.name!r} is not followed by a Cast back to float")
        self._add(_Pair(first.input[0], [c.output[0] for c in seconds], enc, [first, *seconds]))

    def _restored_name(self, dq_out: str, init: str) -> str:
        taken = {o for n in self.proto.graph.node for o in (*n.input, *n.output)} | set(self.consts)
        taken -= {dq_out, init}
        stripped = [dq_out[: -len(s)] for s in _DQ_SUFFIXES if dq_out.endswith(s)]
        candidates = [*stripped, init.removesuffix("_quantized"), dq_out]
        return next((c for c in candidates if c and c not in taken), dq_out)

    def _key(self, pair: _Pair) -> str:
        """Graph outputs keep their public name; otherwise the float tensor's name comes back."""
        outputs = {o.name for o in self.proto.graph.output}
        public = [o for o in pair.outputs if o in outputs]
        if public and pair.source in self.producer:
            return public[0]
        return pair.source

    def float_graph(self) -> onnx.ModelProto:
        graph = self.proto.graph
        removed = {id(n) for p in self.pairs.values() for n in p.nodes}
        rename: dict[str, str] = {}
        for pair in self.pairs.values():
            key = self._key(pair)
            rename.update({o: key for o in pair.outputs})
            rename[pair.source] = key
        kept = [n for n in graph.node if id(n) not in removed]
        for node in kept:
            for i, name in enumerate(node.input):
                node.input[i] = rename.get(name, name)
            for i, name in enumerate(node.output):
                node.output[i] = rename.get(name, name)
        for out in graph.output:
            out.name = rename.get(out.name, out.name)
        used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
        dropped_consts = {i for n in graph.node if id(n) in removed for i in n.input} - used
        kept = [n for n in kept if not (n.op_type == "Constant" and n.output[0] in dropped_consts)]
        inits = [t for t in graph.initializer if t.name not in dropped_consts]
        del graph.node[:]
        graph.node.extend(kept)
        del graph.initializer[:]
        graph.initializer.extend(inits + [t for t in self.new_inits if t.name in used])
        present = {o for n in kept for o in n.output} | used
        value_info = [v for v in graph.value_info if v.name in present]
        del graph.value_info[:]
        graph.value_info.extend(value_info)
        if not any(n.domain == MS_DOMAIN for n in kept):
            imports = [o for o in self.proto.opset_import if o.domain != MS_DOMAIN]
            del self.proto.opset_import[:]
            self.proto.opset_import.extend(imports)
        return self.proto


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _is_fp16_cast(node: onnx.NodeProto) -> bool:
    return _cast_to(node) == TensorProto.FLOAT16 and node.output[0] == node.input[0] + FP16_SUFFIX


def _onnx_dequantize(codes: np.ndarray, node: onnx.NodeProto, enc: Encoding) -> np.ndarray:
    """ONNX DequantizeLinear of constant ``codes``: ``(q - zero_point) * scale`` in float32."""
    scale, zp = enc.scale, enc.zero_point
    if enc.block_size:
        axis = enc.block_axis % codes.ndim
        scale = np.repeat(scale, enc.block_size, axis=axis)
        zp = np.repeat(zp, enc.block_size, axis=axis)
    elif enc.axis is not None:
        shape = [1] * codes.ndim
        shape[enc.axis % codes.ndim] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    elif codes.ndim == 0:
        scale, zp = scale.reshape(()), zp.reshape(())
    if np.broadcast_shapes(scale.shape, codes.shape) != codes.shape:
        raise InputError(
            f"DequantizeLinear {node.name!r}: scale shape {scale.shape} does not fit {codes.shape}"
        )
    return ((codes - zp.astype(np.int64)).astype(np.float32) * scale.astype(np.float32)).astype(np.float32)


def read_qdq_model(model: onnx.ModelProto, source: str = "QDQ model") -> tuple[onnx.ModelProto, EncodingSet]:
    """The float graph of a QDQ model and the encodings its Q/DQ nodes carry (unbound, version "qdq")."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    reader = _QdqReader(proto, source)
    encset = reader.read()
    # a fresh message: the copy's memory still holds the integer weights and Q/DQ nodes it dropped (protobuf
    # frees a message's storage only with the message), as much again as the model
    return onnx.load_from_string(reader.float_graph().SerializeToString()), encset
