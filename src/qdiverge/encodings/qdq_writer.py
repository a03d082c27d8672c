"""``EncodingSet`` -> ONNX QDQ model, so one model runs with its encodings on onnxruntime CPU or on
Qualcomm's HTP backend (the inverse of ``encodings.qdq``).

Activations get a QuantizeLinear/DequantizeLinear pair after every encoded tensor, params a pair on the
initializer (or integer weights behind a DequantizeLinear), biases int32 at ``s_in * s_w`` when asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qdiverge.encodings.bind import cb_to_blocked, upstream_encoding
from qdiverge.encodings.qdq import BIAS_OPS, DEQUANTIZE, FP16_SUFFIX, MS_DOMAIN, ONNX_INT_TYPES, QUANTIZE
from qdiverge.encodings.schema import Encoding, EncodingSet
from qdiverge.errors import UnsupportedError
from qdiverge.loading.model import Model
from qdiverge.quant import quantize_aimet, round_half_away


class _QdqWriter:
    def __init__(self, model: Model):
        self.model = model
        self.proto = onnx.ModelProto()
        self.proto.CopyFrom(model.proto)
        self.taken = set(model.tensor_names)
        self.after: dict[int | None, list[onnx.NodeProto]] = {}  # producer index (None: graph head)
        self.inits: list[TensorProto] = []
        self.uses_ms = False

    def fresh(self, name: str) -> str:
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def _rewire(self, old: str, new: str) -> None:
        for node in self.proto.graph.node:
            for i, inp in enumerate(node.input):
                if inp == old:
                    node.input[i] = new

    def _domain(self, enc: Encoding) -> str:
        opset = self.model.opset
        plain = enc.bitwidth in (8, 32) and not enc.block_size and (opset >= 13 or not enc.per_channel)
        if opset >= 21 or plain:
            return ""
        if enc.block_size:
            raise UnsupportedError(
                f"{enc.name!r}: blockwise QDQ needs opset >= 21; the model has opset {opset}"
            )
        self.uses_ms = True
        return MS_DOMAIN

    def _scale_zp(self, enc: Encoding, rank: int) -> tuple[list[str], dict, str]:
        elem = ONNX_INT_TYPES.get((enc.bitwidth, enc.signed))
        if elem is None:
            raise UnsupportedError(f"{enc.name!r}: {enc.describe()} has no ONNX QDQ type")
        zp = enc.zero_point
        if not np.all(zp == np.round(zp)):
            raise UnsupportedError(
                f"{enc.name!r}: a fractional zero point (zero_point_shift) has no ONNX form"
            )
        attrs: dict = {}
        scale = enc.scale
        if enc.block_size:
            scale, zp = (cb_to_blocked(a, enc.axis, enc.block_axis, rank) for a in (scale, zp))
            attrs = {"axis": enc.block_axis, "block_size": enc.block_size}
        elif enc.per_channel:
            attrs = {"axis": enc.axis}
        else:
            scale, zp = scale.reshape(()), zp.reshape(())
        s_name, z_name = self.fresh(f"{enc.name}_scale"), self.fresh(f"{enc.name}_zero_point")
        self.inits.append(numpy_helper.from_array(scale.astype(np.float32), s_name))
        self.inits.append(helper.make_tensor(z_name, elem, zp.shape, zp.astype(np.int64).ravel().tolist()))
        return [s_name, z_name], attrs, self._domain(enc)

    def _anchor(self, name: str) -> int | None:
        producer = self.model.producer.get(name)
        return producer.index if producer is not None else None

    def quantize(self, name: str, enc: Encoding, suffix: str) -> None:
        """Q->DQ (or an fp16 Cast pair) after ``name``; its readers then see the quantized value."""
        is_output = name in self.model.outputs and name in self.model.producer
        src = name
        if is_output:  # keep the public name on the quantized value
            src = self.fresh(f"{name}_raw")
            producer = self.proto.graph.node[self.model.producer[name].index]
            producer.output[list(producer.output).index(name)] = src
            out = name
        else:
            out = self.fresh(name + suffix)
            self._rewire(name, out)
        if enc.is_float:
            mid = self.fresh(src + FP16_SUFFIX)
            nodes = [
                helper.make_node("Cast", [src], [mid], to=TensorProto.FLOAT16),
                helper.make_node("Cast", [mid], [out], to=TensorProto.FLOAT),
            ]
        else:
            inputs, attrs, domain = self._scale_zp(enc, len(self.model.shapes.get(name, ())))
            mid = self.fresh(f"{name}_q")
            nodes = [
                helper.make_node(
                    QUANTIZE, [src, *inputs], [mid], f"QcQuantizeOp_{name}_q", domain=domain, **attrs
                ),
                helper.make_node(
                    DEQUANTIZE, [mid, *inputs], [out], f"QcQuantizeOp_{name}_dq", domain=domain, **attrs
                ),
            ]
        self.after.setdefault(self._anchor(name), []).extend(nodes)

    def integer_constant(self, name: str, enc: Encoding, codes: np.ndarray) -> None:
        """Replace float constant ``name`` by integer ``codes`` behind a DequantizeLinear."""
        inputs, attrs, domain = self._scale_zp(enc, codes.ndim)
        elem = ONNX_INT_TYPES[(enc.bitwidth, enc.signed)]
        int_name, out = self.fresh(f"{name}_quantized"), self.fresh(f"{name}_qdq")
        self.inits.append(
            helper.make_tensor(int_name, elem, codes.shape, codes.astype(np.int64).ravel().tolist())
        )
        self._rewire(name, out)
        node = helper.make_node(
            DEQUANTIZE, [int_name, *inputs], [out], f"QcQuantizeOp_{name}_dq", domain=domain, **attrs
        )
        self.after.setdefault(None, []).append(node)
        keep = [t for t in self.proto.graph.initializer if t.name != name]
        del self.proto.graph.initializer[:]
        self.proto.graph.initializer.extend(keep)

    def finish(self) -> onnx.ModelProto:
        graph = self.proto.graph
        ordered = list(self.after.get(None, []))
        for index, node in enumerate(list(graph.node)):
            ordered.append(node)
            ordered.extend(self.after.get(index, []))
        del graph.node[:]
        graph.node.extend(ordered)
        graph.initializer.extend(self.inits)
        if self.uses_ms and not any(o.domain == MS_DOMAIN for o in self.proto.opset_import):
            self.proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
        return self.proto


def bias_encoding(model: Model, encset: EncodingSet, node_name: str) -> Encoding | None:
    """int32 bias encoding of a Conv/ConvTranspose/Gemm: ``s_in * s_w`` per channel, zero point 0.

    Blockwise weights use the largest block scale of each channel, as AIMET's export does.
    """
    node = model.node_by_name(node_name)
    if node.op_type not in BIAS_OPS or len(node.inputs) < 3 or not model.is_constant(node.inputs[2]):
        return None
    bias = node.inputs[2]
    if bias in encset.int32_bias:
        return encset.int32_bias[bias]
    x_enc = upstream_encoding(model, encset, node.inputs[0])
    w_enc = encset.params.get(node.inputs[1])
    if x_enc is None or w_enc is None or x_enc.is_float or w_enc.is_float or x_enc.per_channel:
        return None
    w_scale = w_enc.scale.max(axis=1) if w_enc.block_size else w_enc.scale
    scale = float(x_enc.scale[0]) * w_scale
    per_channel = scale.size > 1
    return Encoding(
        bias,
        32,
        scale,
        np.full_like(scale, -float(1 << 31)),
        signed=True,
        symmetric=True,
        axis=0 if per_channel else None,
        is_param=True,
    )


def write_qdq_model(
    model: Model,
    encset: EncodingSet,
    path: str | Path | None = None,
    *,
    int_weights: bool = False,
    int32_bias: bool = False,
) -> onnx.ModelProto:
    """The QDQ form of ``model`` with bound ``encset``; saved to ``path`` when given.

    Activations (and 2.0.0 derived entries) get Q->DQ after the tensor. Params get Q->DQ on the float
    weight (lossless, so ``read_qdq_model`` gives the float model back) or, with ``int_weights``,
    integer weights computed with AIMET's rounding behind a DQ (the sim's weights exactly).
    ``int32_bias`` stores Conv/ConvTranspose/Gemm biases as int32 at ``s_in * s_w``.
    """
    writer = _QdqWriter(model)
    for name, enc in encset.activations.items():
        writer.quantize(name, enc, "_updated")
    for name, enc in encset.derived.items():
        writer.quantize(name, enc, "_qdq")
    for name, enc in encset.params.items():
        if int_weights and not enc.is_float:
            writer.integer_constant(name, enc, quantize_aimet(model.initializers[name], enc))
        else:
            writer.quantize(name, enc, "_qdq")
    if int32_bias:
        for node in model.nodes:
            enc = bias_encoding(model, encset, node.name) if node.op_type in BIAS_OPS else None
            if enc is not None:
                values = model.initializers[enc.name].astype(np.float64)
                codes = np.clip(
                    round_half_away(values / enc.broadcast(enc.scale, values.ndim)), -(2**31), 2**31 - 1
                )
                writer.integer_constant(enc.name, enc, codes)
    proto = writer.finish()
    if path is not None:
        onnx.save(proto, str(path))
    return proto
