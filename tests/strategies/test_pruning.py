import numpy as np
import pytest

from strategies import PruningConfigError, PruningSchedule, magnitude_masks, prunable_names


def test_cubic_schedule_follows_zhu_and_gupta():
    s = PruningSchedule(final_sparsity=0.9, initial_sparsity=0.1, start_round=3, end_round=13)
    assert s.sparsity(1) == 0.0  # before the ramp
    assert s.sparsity(3) == pytest.approx(0.1)
    # s_t = s_f + (s_i - s_f)(1 - t/n)^3 at halfway: 0.9 - 0.8 * 0.125
    assert s.sparsity(8) == pytest.approx(0.9 - 0.8 * 0.5**3)
    assert s.sparsity(13) == pytest.approx(0.9) == s.sparsity(50)
    values = [s.sparsity(r) for r in range(3, 14)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert PruningSchedule(final_sparsity=0.5, kind="linear", end_round=5).sparsity(
        3
    ) == pytest.approx(0.25)
    assert PruningSchedule(final_sparsity=0.5, kind="constant").sparsity(1) == 0.5


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"final_sparsity": 1.0}, "prune"),
        ({"final_sparsity": 0.5, "initial_sparsity": 0.6}, "prune-initial"),
        ({"final_sparsity": 0.5, "start_round": 5, "end_round": 4}, "prune-start-round"),
        ({"final_sparsity": 0.5, "kind": "exp"}, "prune-schedule"),
        ({"final_sparsity": 0.5, "scope": "row"}, "prune-scope"),
    ],
)
def test_bad_schedules_name_the_setting(kwargs, key):
    with pytest.raises(PruningConfigError, match=key):
        PruningSchedule(**kwargs)


ARRAYS = {
    "a.weight": np.array([[0.1, -3.0], [2.0, 0.05]], np.float32),
    "a.bias": np.array([9.0, 9.0], np.float32),
    "b.weight": np.array([[0.5, -0.4, 0.3]], np.float32),
}


def test_only_matrices_are_prunable_and_frozen_ones_are_not():
    assert prunable_names(ARRAYS) == ["a.weight", "b.weight"]
    assert prunable_names(ARRAYS, frozen=("a.",)) == ["b.weight"]


def test_global_masks_keep_the_largest_weights_overall():
    masks = magnitude_masks(ARRAYS, ["a.weight", "b.weight"], sparsity=4 / 7, scope="global")
    assert masks.masks["a.weight"].tolist() == [[False, True], [True, False]]
    assert masks.masks["b.weight"].tolist() == [[True, False, False]]
    assert masks.sparsity() == pytest.approx(4 / 7)


def test_layer_masks_prune_each_tensor_alike():
    masks = magnitude_masks(ARRAYS, ["a.weight", "b.weight"], sparsity=0.5, scope="layer")
    assert (
        masks.masks["a.weight"].sum() == 2 and masks.masks["b.weight"].sum() == 1
    )  # 1.5 -> 2 pruned


def test_masks_only_grow_sparser_as_the_schedule_rises():
    rng = np.random.default_rng(0)
    arrays = {"w": rng.normal(size=(40, 30)).astype(np.float32)}
    previous = None
    for sparsity in (0.3, 0.5, 0.5, 0.8):
        masks = magnitude_masks(arrays, ["w"], sparsity, scope="global")
        if previous is not None:
            assert not (masks.masks["w"] & ~previous).any()  # nothing pruned comes back
        arrays = masks.apply(arrays)
        previous = masks.masks["w"]
