import numpy as np
import pytest
import torch

from client_sdk import LocalSchedule, OptimizerSpec, Task, evaluate_model, model_arrays, train_local
from client_sdk.export import dequantize_int8, quantize_int8, save_npz
from client_sdk.local_model import finish_local_model, prepare_local_model
from client_sdk.tasks.digits import digits_task
from simulations.partitioners import IidPartitioner
from strategies import magnitude_masks, prunable_names

DATA = digits_task().data.client_data(0, 3, partitioner=IidPartitioner(), seed=0)


def _task(optimizer):
    base = digits_task()
    return Task(name="d", model_fn=base.model_fn, data=base.data, optimizer=optimizer)


@pytest.mark.parametrize(
    "optimizer",
    [
        OptimizerSpec(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
        OptimizerSpec(name="adamw", lr=0.01, weight_decay=0.1),
    ],
)
@pytest.mark.parametrize("qat", [False, True])
def test_pruned_coordinates_stay_exactly_zero_after_local_training(optimizer, qat):
    task = _task(optimizer)
    model = task.build_model(seed=0)
    start = model_arrays(model)
    masks = magnitude_masks(start, prunable_names(start), 0.8, scope="layer")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in masks.masks:
                param.mul_(torch.from_numpy(masks.masks[name].astype(np.float32)))
    prepare_local_model(model, masks=masks.masks, qat=qat)
    train_local(
        model,
        task,
        DATA,
        LocalSchedule(lr=optimizer.lr, epochs=2, batch_size=16),
        torch.Generator().manual_seed(0),
    )
    finish_local_model(model)
    after = model_arrays(model)
    for name, mask in masks.masks.items():
        assert np.all(after[name][~mask] == 0.0)
        assert np.any(after[name][mask] != start[name][mask])  # kept weights did train
    assert not any("parametrizations" in n for n in model.state_dict())


def test_qat_leaves_int8_representable_weights_and_still_learns():
    task = _task(OptimizerSpec(name="sgd", lr=0.1, momentum=0.9))
    model = task.build_model(seed=0)
    loss_before, _ = evaluate_model(model, task, DATA.x_train, DATA.y_train)
    prepare_local_model(model, qat=True)
    train_local(
        model,
        task,
        DATA,
        LocalSchedule(lr=0.1, epochs=3, batch_size=16),
        torch.Generator().manual_seed(0),
    )
    finish_local_model(model)
    loss_after, acc = evaluate_model(model, task, DATA.x_train, DATA.y_train)
    assert loss_after < 0.5 * loss_before and acc > 0.8
    weights = model_arrays(model)
    round_trip = dequantize_int8(quantize_int8(weights))
    for name, value in weights.items():
        np.testing.assert_allclose(round_trip[name], value, rtol=1e-6, atol=1e-7)


def test_frozen_parameters_do_not_change():
    task = _task(OptimizerSpec(name="adamw", lr=0.01, weight_decay=0.5))
    model = task.build_model(seed=0)
    start = model_arrays(model)
    prepare_local_model(model, frozen=("0.",))
    train_local(
        model,
        task,
        DATA,
        LocalSchedule(lr=0.01, epochs=1, batch_size=16),
        torch.Generator().manual_seed(0),
    )
    finish_local_model(model)
    after = model_arrays(model)
    assert np.array_equal(after["0.weight"], start["0.weight"]) and np.array_equal(
        after["0.bias"], start["0.bias"]
    )
    assert not np.array_equal(after["2.weight"], start["2.weight"])


def test_int8_export_is_about_four_times_smaller_on_disk(tmp_path):
    weights = model_arrays(digits_task().build_model(seed=0))
    float_bytes = save_npz(tmp_path / "f.npz", weights)
    int8_bytes = save_npz(tmp_path / "q.npz", quantize_int8(weights))
    assert 3.0 < float_bytes / int8_bytes < 4.0
    back = dequantize_int8(dict(np.load(tmp_path / "q.npz")))
    for name, value in weights.items():
        step = np.abs(value).max() / 127
        assert np.abs(back[name] - value).max() <= step / 2 + 1e-7
