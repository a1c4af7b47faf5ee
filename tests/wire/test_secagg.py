"""Secure-aggregation primitives: Shamir sharing, key agreement, sealed shares, masks, vectors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import RejectReason, UpdateRejected
from wire.ddp_vector import DdpVectorSpec, vector_spec_from_config
from wire.dp import choose_scale, clip_l2
from wire.mask import MaskSet
from wire.rotation import block_for
from wire.secagg import (
    SHAMIR_PRIME,
    agree,
    agree_each,
    combine_shares,
    decrypt,
    encrypt,
    mask_stream,
    modulus_bits,
    new_private_key,
    public_key,
    split_secret,
)
from wire.secagg_protocol import id_set, ids_bytes, node_ids
from wire.secagg_vector import SecAggVectorSpec, flatten_kept, kept_count, unflatten_kept


def _is_probable_prime(n: int) -> bool:
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_field_is_prime_and_holds_every_32_byte_secret():
    assert SHAMIR_PRIME > 2**256 and _is_probable_prime(SHAMIR_PRIME)


@settings(deadline=None, max_examples=40)
@given(st.binary(min_size=32, max_size=32), st.integers(1, 12), st.integers(0, 12), st.data())
def test_any_threshold_subset_rebuilds_the_secret(secret, threshold, extra, data):
    holders = threshold + extra
    shares = split_secret(secret, threshold, holders)
    picked = data.draw(st.permutations(range(holders)))[:threshold]
    assert combine_shares({i: shares[i] for i in picked}, threshold) == secret


def test_fewer_shares_than_the_threshold_do_not_reveal_the_secret():
    secret = bytes(range(32))
    shares = split_secret(secret, 3, 5)
    with pytest.raises(ValueError, match="3 needed"):
        combine_shares({0: shares[0], 1: shares[1]}, 3)
    # interpolating two shares as if t were 2 gives an unrelated value (or no 32-byte secret)
    try:
        assert combine_shares({0: shares[0], 1: shares[1]}, 2) != secret
    except UpdateRejected:
        pass


def test_a_corrupt_share_is_refused_not_crashed_on():
    shares = split_secret(bytes(32), 2, 3)
    with pytest.raises(UpdateRejected, match="33-byte"):
        combine_shares({0: shares[0], 1: shares[1][:-1]}, 2)
    with pytest.raises(UpdateRejected, match="below the field prime"):
        combine_shares({0: shares[0], 1: b"\xff" * 33}, 2)


def test_agreement_is_symmetric_and_purpose_separated():
    a, b = new_private_key(), new_private_key()
    assert agree(a, public_key(b), b"x") == agree(b, public_key(a), b"x")
    assert agree(a, public_key(b), b"x") != agree(a, public_key(b), b"y")
    with pytest.raises(UpdateRejected, match="32 bytes"):
        agree(a, b"short", b"x")


def test_agree_each_equals_one_agreement_per_peer():
    me, peers = new_private_key(), [new_private_key() for _ in range(3)]
    publics = [public_key(p) for p in peers]
    assert agree_each(me, publics, b"x") == [agree(me, p, b"x") for p in publics]
    assert agree_each(me, [], b"x") == []
    with pytest.raises(UpdateRejected, match="32 bytes"):
        agree_each(me, [publics[0], b"short"], b"x")


def test_sealed_shares_reject_tampering_and_other_contexts():
    key = agree(new_private_key(), public_key(new_private_key()), b"share")
    sealed = encrypt(key, b"share bytes", b"round 1")
    assert decrypt(key, sealed, b"round 1") == b"share bytes"
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    for box, context in ((bytes(flipped), b"round 1"), (sealed, b"round 2"), (sealed[:10], b"")):
        with pytest.raises(UpdateRejected):
            decrypt(key, box, context)


def test_masks_are_deterministic_per_seed_and_differ_across_seeds():
    a, b = mask_stream(bytes(32), 1000), mask_stream(bytes(32), 1000)
    assert a.dtype == np.uint32 and np.array_equal(a, b)
    assert np.mean(a == mask_stream(b"\x01" + bytes(31), 1000)) < 0.01


def test_modulus_fits_the_sum_and_refuses_what_cannot_fit():
    assert modulus_bits(10, 255) == 12  # 2550 < 4096
    assert modulus_bits(8, 256 * 255) == 19
    with pytest.raises(ValueError, match="at most 32"):
        modulus_bits(10_000, 256 * 65535)


def test_quantized_weighted_sum_recovers_the_weighted_mean():
    spec = SecAggVectorSpec(bits=12, clip=1.0, max_weight=100, clients=50)
    rng = np.random.default_rng(0)
    updates = rng.uniform(-0.5, 0.5, size=(50, 400))
    weights = rng.integers(1, 101, size=50)
    total = np.zeros(401, dtype=np.uint64)
    for update, weight in zip(updates, weights, strict=True):
        vector, clipped = spec.quantize(update.astype(np.float32), int(weight), rng)
        assert clipped == 0
        total += vector
    assert total.max() <= spec.modulus_mask
    mean, weight = spec.weighted_mean(total.astype(np.uint32))
    want = (updates * weights[:, None]).sum(0) / weights.sum()
    assert weight == weights.sum()
    assert np.abs(mean - want).max() < 4 * (2 / spec.levels)  # unbiased, within a few steps
    with pytest.raises(UpdateRejected, match="length-mismatch|bytes"):
        spec.unpack(spec.pack(total.astype(np.uint32))[:-1], 401)


def test_a_non_finite_update_is_refused_not_masked():
    spec = SecAggVectorSpec(bits=8, clip=1.0, max_weight=10, clients=4)
    for bad in (np.nan, np.inf, -np.inf):
        update = np.zeros(5, np.float32)
        update[2] = bad
        with pytest.raises(UpdateRejected) as err:
            spec.quantize(update, 3, np.random.default_rng(0))
        assert err.value.reason == RejectReason.NON_FINITE


def test_kept_coordinates_round_trip_with_pruned_zeros():
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float32)}
    masks = MaskSet({"w": np.arange(12).reshape(3, 4) % 3 == 0})
    flat = flatten_kept(arrays, ["w", "b"], masks)
    assert flat.tolist() == [0, 3, 6, 9, 1, 1, 1]
    shapes = {"w": (3, 4), "b": (3,)}
    assert kept_count(shapes, masks) == 7
    back = unflatten_kept(flat, shapes, masks)
    assert np.array_equal(back["w"], masks.apply(arrays)["w"]) and back["b"].tolist() == [1, 1, 1]


def test_node_id_lists_round_trip_and_parse_once_per_content():
    ids = [2**64 - 1, 5, 2**63 + 7]
    raw = ids_bytes(ids)
    assert node_ids(raw) == ids and all(type(v) is int for v in node_ids(raw))
    first = id_set(raw)
    assert first == frozenset(ids)
    assert id_set(bytes(bytearray(raw))) is first  # another object, same content: cached
    with pytest.raises(UpdateRejected, match="8-byte aligned"):
        id_set(raw[:-1])


def _ddp(clients: int = 5, length: int = 300, stddev: float = 1e-6, bits: int = 16):
    """A distributed-DP spec with near-zero noise (``stddev`` in update units per client)."""
    kw = {"bits": bits, "clip": 1.0, "seed": 7, "block": 4096, "length": length}
    dim = DdpVectorSpec(scale=1.0, local_variance=1.0, clients=clients, **kw).rotated_length
    block = block_for(length, 4096)
    scale = choose_scale(
        bits=bits, clients=clients, clip=1.0, dim=dim, block=block, local_stddev=stddev
    )
    return DdpVectorSpec(scale=scale, local_variance=(scale * stddev) ** 2, clients=clients, **kw)


def test_the_ddp_vector_decodes_to_the_clipped_mean_to_rounding_error():
    spec = _ddp()
    rng = np.random.default_rng(1)
    updates = rng.normal(0, 0.03, size=(5, 300)).astype(np.float32)  # norms ~0.5
    updates[0] *= 100  # norm ~52: clipped to 1
    total = np.zeros(spec.vector_size(300), dtype=np.uint64)
    clipped = []
    for update in updates:
        vector, count = spec.quantize(update, spec.weight_of(1234), rng)
        assert vector.dtype == np.uint32 and vector[-1] == 1 and vector.max() <= spec.modulus_mask
        clipped.append(count)
        total = (total + vector) & np.uint64(spec.modulus_mask)
    assert clipped == [300, 0, 0, 0, 0]
    total = total.astype(np.uint32)
    spec.check_sum(total, 5)
    mean, count = spec.weighted_mean(total)
    want = np.mean([clip_l2(u, 1.0)[0] for u in updates], axis=0)
    assert count == 5 and mean.shape == (300,)
    # 5 roundings and noises of variance <= 1/4 + 1/16 integer units each, over 5 uploads
    assert np.abs(mean - want).max() < 3 / spec.scale
    assert spec.unpack(spec.pack(total), total.size).tolist() == total.tolist()
    with pytest.raises(UpdateRejected, match="bytes"):
        spec.unpack(spec.pack(total)[:-1], total.size)
    with pytest.raises(ValueError, match="counts 5 uploads, not the 4"):
        spec.check_sum(total, 4)


def test_a_ddp_vector_refuses_non_finite_or_misshaped_updates():
    spec = _ddp(length=10)
    rng = np.random.default_rng(0)
    for update, weight, reason in (
        (np.full(10, np.nan, np.float32), 1, RejectReason.NON_FINITE),
        (np.zeros(11, np.float32), 1, RejectReason.LENGTH_MISMATCH),
        (np.zeros(10, np.float32), 2, RejectReason.LENGTH_MISMATCH),
    ):
        with pytest.raises(UpdateRejected) as err:
            spec.quantize(update, weight, rng)
        assert err.value.reason == reason


def test_the_record_names_its_spec_and_each_spec_refuses_the_others():
    ddp, grid = _ddp(), SecAggVectorSpec(bits=8, clients=5)
    assert vector_spec_from_config(ddp.as_config()) == ddp
    assert vector_spec_from_config(grid.as_config()) == grid
    with pytest.raises(UpdateRejected, match="vector"):
        SecAggVectorSpec.from_config(ddp.as_config())
    with pytest.raises(UpdateRejected, match="dp vector"):
        DdpVectorSpec.from_config(grid.as_config())
    with pytest.raises(UpdateRejected, match="vector"):
        vector_spec_from_config({k: v for k, v in grid.as_config().items() if k != "vector"})


@pytest.mark.parametrize(
    "changes",
    [
        {"vector": "ddp2"},
        {"vector": 1},
        {"bits": True},
        {"bits": 16.0},
        {"bits": 7},
        {"bits": 33},
        {"clip": np.nan},
        {"clip": -1.0},
        {"clip": "1"},
        {"scale": np.inf},
        {"scale": 0.0},
        {"local-variance": np.nan},
        {"local-variance": 0.0},
        {"local-variance": 2.0**40},
        {"rotation-seed": -1},
        {"rotation-seed": 2**63},
        {"rotation-seed": 1.5},
        {"rotation-block": 100},
        {"rotation-block": 2**40},
        {"rotation-block": False},
        {"length": 0},
        {"length": 2**62},
        {"clients": 0},
        {"clients": 2**16},  # the count would wrap the 16-bit modulus
        {"clients": [3]},
        {"length": None},
    ],
    ids=repr,
)
def test_a_hostile_ddp_record_is_bad_secagg(changes):
    record = {**_ddp().as_config(), **changes}
    if changes.get("length", 1) is None:
        del record["length"]
    with pytest.raises(UpdateRejected) as err:
        vector_spec_from_config(record)
    assert err.value.reason == RejectReason.BAD_SECAGG
