"""Compress an update with error feedback: what compression dropped is added to the next one.

Error feedback (Seide et al., "1-bit SGD", Interspeech 2014; Karimireddy et al., "Error
Feedback Fixes SignSGD", ICML 2019; Stich et al. 2018 for top-k): the client keeps
e <- (delta + e) - decode(encode(delta + e)) in its node state between rounds, so the bias of
quantization or sparsification does not accumulate. Residuals at coordinates the current mask
prunes are dropped.

The residual is kept as one flat float32 Array plus its layout (names, shapes): Flower's
``Array`` serializes each array with ``np.save`` and parses it back with ``np.load``, a fixed
cost per array each way that one flat Array pays once per client and round, not once per
tensor (benchmarks/README.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from wire import CodecSpec, MaskSet, decode_update, encode_update

RESIDUAL_KEY = "pollen.error-feedback"  # ArrayRecord {"values": flat float32}
LAYOUT_KEY = "pollen.error-feedback.layout"  # ConfigRecord {"names": [...], "shapes": ["8x8"]}


def _flat_residual(state: RecordDict) -> np.ndarray | None:
    record = state.get(RESIDUAL_KEY)
    if not isinstance(record, ArrayRecord) or "values" not in record:
        return None
    return record["values"].numpy()


def flat_norm(flat: np.ndarray | None) -> float:
    """L2 norm of a flat residual (float64 sum of squares), 0 when there is none."""
    return 0.0 if flat is None else float(np.sqrt(np.square(flat, dtype=np.float64).sum()))


def residual_norm(state: RecordDict) -> float:
    return flat_norm(_flat_residual(state))


def load_residual(state: RecordDict) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The flat residual kept in ``state`` (None without one) and its tensors by name."""
    flat, layout = _flat_residual(state), state.get(LAYOUT_KEY)
    if flat is None or not isinstance(layout, ConfigRecord):
        return flat, {}
    names = list(layout["names"])  # type: ignore[arg-type]
    shapes = [tuple(int(d) for d in s.split("x") if d) for s in layout["shapes"]]  # type: ignore[union-attr]
    sizes = [math.prod(shape) for shape in shapes]
    if sum(sizes) != flat.size:
        return flat, {}
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    return flat, {n: p.reshape(shape) for n, p, shape in zip(names, parts, shapes, strict=True)}


def stored_residual(state: RecordDict) -> dict[str, np.ndarray]:
    """The residual kept in ``state``, per tensor (empty when there is none)."""
    return load_residual(state)[1]


def store_residual(state: RecordDict, residual: Mapping[str, np.ndarray]) -> None:
    values = [np.asarray(v, np.float32).ravel() for v in residual.values()]
    flat = np.concatenate(values) if values else np.zeros(0, np.float32)
    store_flat_residual(state, flat, list(residual), [np.shape(v) for v in residual.values()])


def store_flat_residual(
    state: RecordDict, flat: np.ndarray, names: list[str], shapes: list[tuple[int, ...]]
) -> None:
    """Keep ``flat`` (the tensors ``names`` of ``shapes``, raveled in that order) in ``state``."""
    state[RESIDUAL_KEY] = ArrayRecord({"values": Array(np.asarray(flat, np.float32))})
    state[LAYOUT_KEY] = ConfigRecord(
        {"names": list(names), "shapes": ["x".join(str(d) for d in shape) for shape in shapes]}
    )


def encode_with_feedback(
    delta: Mapping[str, np.ndarray],
    *,
    server_round: int,
    codec: CodecSpec,
    masks: MaskSet | None,
    rng: np.random.Generator,
    state: RecordDict | None,
) -> bytes:
    """Encode ``delta`` (+ the stored residual when ``state`` is given) and update the residual."""
    target = dict(delta)
    if state is not None:
        stored = stored_residual(state)
        for name, value in target.items():
            if name in stored and stored[name].shape == value.shape:
                target[name] = value + stored[name]
    if masks is not None:
        target = masks.apply(target)
    payload = encode_update(target, server_round=server_round, codec=codec, masks=masks, rng=rng)
    if state is not None:
        sent = decode_update(payload, masks=masks).as_dict()
        store_residual(state, {name: target[name] - sent[name] for name in target})
    return payload
