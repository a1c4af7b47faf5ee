import numpy as np
import pytest

from wire import MaskSet, RejectReason, UpdateRejected


def test_mask_round_trip_digest_and_apply():
    rng = np.random.default_rng(0)
    masks = MaskSet({"w": rng.random((13, 7)) < 0.3, "v": rng.random(9) < 0.5})
    payload = masks.encode()
    back = MaskSet.decode(payload, expected={"w": (13, 7), "v": (9,), "b": (3,)})
    assert back.digest == masks.digest
    assert all(np.array_equal(back.masks[k], masks.masks[k]) for k in masks.masks)
    assert len(payload) < 8 + 60 + (13 * 7 + 7) // 8 + 2  # bits, not bytes, per coordinate
    applied = masks.apply({"w": np.ones((13, 7), np.float32), "b": np.ones(3, np.float32)})
    assert applied["w"].sum() == masks.masks["w"].sum() and applied["b"].sum() == 3
    flipped = MaskSet({**masks.masks, "v": ~masks.masks["v"]})
    assert flipped.digest != masks.digest
    assert masks.sparsity() == pytest.approx(
        1 - (masks.masks["w"].sum() + masks.masks["v"].sum()) / 100
    )


@pytest.mark.parametrize(
    "mutate",
    [lambda p: p[:-1], lambda p: p + b"\0", lambda p: b"XXXX" + p[4:], lambda p: p[:6]],
)
def test_corrupt_masks_are_rejected(mutate):
    payload = MaskSet({"w": np.ones((4, 4), bool)}).encode()
    with pytest.raises(UpdateRejected) as info:
        MaskSet.decode(mutate(payload), expected={"w": (4, 4)})
    assert info.value.reason == RejectReason.MASK_MISMATCH


def test_mask_for_a_tensor_the_model_lacks_is_rejected():
    payload = MaskSet({"w": np.ones((4, 4), bool)}).encode()
    with pytest.raises(UpdateRejected, match="not in the model"):
        MaskSet.decode(payload, expected={"w": (4, 5)})
