"""Compress an update with error feedback: what compression dropped is added to the next one.

Error feedback (Seide et al., "1-bit SGD", Interspeech 2014; Karimireddy et al., "Error
Feedback Fixes SignSGD", ICML 2019; Stich et al. 2018 for top-k): the client keeps
e <- (delta + e) - decode(encode(delta + e)) in its node state between rounds, so the bias of
quantization or sparsification does not accumulate. Residuals at coordinates the current mask
prunes are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from wire import CodecSpec, MaskSet, decode_update, encode_update

RESIDUAL_KEY = "pollen.error-feedback"


def residual_norm(state: RecordDict) -> float:
    if RESIDUAL_KEY not in state.array_records:
        return 0.0
    return float(np.sqrt(sum(float((a.numpy() ** 2).sum()) for a in state[RESIDUAL_KEY].values())))


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
    if state is not None and RESIDUAL_KEY in state.array_records:
        stored = {k: v.numpy() for k, v in state[RESIDUAL_KEY].items()}
        for name, value in target.items():
            if name in stored and stored[name].shape == value.shape:
                target[name] = value + stored[name]
    if masks is not None:
        target = masks.apply(target)
    payload = encode_update(target, server_round=server_round, codec=codec, masks=masks, rng=rng)
    if state is not None:
        sent = decode_update(payload, masks=masks).as_dict()
        state[RESIDUAL_KEY] = ArrayRecord(
            {name: Array((target[name] - sent[name]).astype(np.float32)) for name in target}
        )
    return payload
