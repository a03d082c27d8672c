"""``load_encodings``: an encodings file or a QDQ model, checked against the model."""

from __future__ import annotations

from pathlib import Path

from qdiverge.encodings.aimet import read_encodings_json
from qdiverge.encodings.bind import bind_encodings
from qdiverge.encodings.qdq import has_qdq, read_qdq_model
from qdiverge.encodings.schema import EncodingSet
from qdiverge.errors import InputError
from qdiverge.loading.model import Model, model_from_proto


def load_encodings(path: str | Path | None, model: Model) -> tuple[Model, EncodingSet, list[str]]:
    """The model to simulate, its bound encodings and warnings about tensors without an encoding.

    With a JSON ``path`` the model is used as is. Without one the model must be a QDQ model: its
    Q/DQ pairs become the encodings and the returned model is the float graph behind them.
    """
    if path is not None:
        if has_qdq(model.proto):
            raise InputError(
                f"{model.path}: the model already has QuantizeLinear/DequantizeLinear nodes; give either"
                f" a QDQ model or a float model with {path}, not both"
            )
        encset, warnings = bind_encodings(read_encodings_json(path), model)
        return model, encset, warnings
    if not has_qdq(model.proto):
        raise InputError(
            f"{model.path}: no encodings given and the model has no QuantizeLinear nodes;"
            " give an encodings file or a QDQ model"
        )
    proto, encset = read_qdq_model(model.proto, str(model.path))
    shapes = {name: info.shape for name, info in model.inputs.items()}
    float_model = model_from_proto(proto, model.path, shapes)
    encset, warnings = bind_encodings(encset, float_model)
    return float_model, encset, warnings
