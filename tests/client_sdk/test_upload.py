import numpy as np
from flwr.app import RecordDict

from client_sdk.upload import (
    RESIDUAL_KEY,
    encode_with_feedback,
    residual_norm,
    store_residual,
    stored_residual,
)
from wire import CodecSpec, MaskSet, decode_update


def test_error_feedback_carries_the_residual_across_rounds():
    """Telescoping identity: sum of what was sent + the last residual == sum of the deltas."""
    rng = np.random.default_rng(0)
    state = RecordDict()
    codec = CodecSpec(quant_bits=1, quant_chunk=16, topk=0.2)
    deltas, sent = [], []
    for server_round in range(1, 6):
        delta = {
            "w": rng.normal(size=(8, 8)).astype(np.float32),
            "b": rng.normal(size=8).astype(np.float32),
        }
        payload = encode_with_feedback(
            delta, server_round=server_round, codec=codec, masks=None, rng=rng, state=state
        )
        deltas.append(delta)
        sent.append(decode_update(payload).as_dict())
        assert RESIDUAL_KEY in state.array_records and residual_norm(state) > 0
    residual = stored_residual(state)
    for name in ("w", "b"):
        total_sent = sum(s[name] for s in sent)
        total_delta = sum(d[name] for d in deltas)
        np.testing.assert_allclose(total_sent + residual[name], total_delta, atol=1e-4)


def test_second_round_sends_what_the_first_dropped():
    state = RecordDict()
    codec = CodecSpec(topk=0.5)
    first = {"w": np.array([4.0, 3.0, 2.0, 1.0], np.float32)}
    p1 = encode_with_feedback(
        first, server_round=1, codec=codec, masks=None, rng=np.random.default_rng(0), state=state
    )
    assert decode_update(p1).as_dict()["w"].tolist() == [4.0, 3.0, 0.0, 0.0]
    zero = {"w": np.zeros(4, np.float32)}
    p2 = encode_with_feedback(
        zero, server_round=2, codec=codec, masks=None, rng=np.random.default_rng(0), state=state
    )
    assert decode_update(p2).as_dict()["w"].tolist() == [0.0, 0.0, 2.0, 1.0]


def test_without_state_nothing_is_kept_and_masks_drop_pruned_residuals():
    masks = MaskSet({"w": np.array([True, False, True, True])})
    state = RecordDict()
    delta = {"w": np.array([1.0, 5.0, -1.0, 0.5], np.float32)}
    payload = encode_with_feedback(
        delta,
        server_round=1,
        codec=CodecSpec(quant_bits=2),
        masks=masks,
        rng=np.random.default_rng(0),
        state=state,
    )
    assert decode_update(payload, masks=masks).as_dict()["w"][1] == 0.0
    assert stored_residual(state)["w"][1] == 0.0  # pruned: not carried over
    encode_with_feedback(
        delta,
        server_round=1,
        codec=CodecSpec(quant_bits=2),
        masks=None,
        rng=np.random.default_rng(0),
        state=None,
    )


def test_the_residual_is_one_flat_array_that_keeps_each_tensors_shape_and_norm():
    state = RecordDict()
    assert stored_residual(state) == {} and residual_norm(state) == 0.0
    residual = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([-2.0], np.float32),
        "s": np.float32(0.5),
    }
    store_residual(state, residual)
    assert list(state[RESIDUAL_KEY]) == ["values"] and state[RESIDUAL_KEY]["values"].shape == (8,)
    back = stored_residual(state)
    assert list(back) == ["w", "b", "s"]
    for name, value in residual.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].shape == np.shape(value)
    assert residual_norm(state) == np.sqrt(
        sum(float(np.sum(np.square(v))) for v in residual.values())
    )


def test_a_stored_residual_of_another_shape_is_not_added():
    state = RecordDict()
    store_residual(state, {"w": np.ones(3, np.float32)})
    delta = {"w": np.zeros(4, np.float32)}
    payload = encode_with_feedback(
        delta,
        server_round=1,
        codec=CodecSpec(),
        masks=None,
        rng=np.random.default_rng(0),
        state=state,
    )
    np.testing.assert_array_equal(decode_update(payload).as_dict()["w"], np.zeros(4))
