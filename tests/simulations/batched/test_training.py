"""The vmapped trainer against the SDK's reference loop, client by client (CPU, float32)."""

import dataclasses
import time

import numpy as np
import pytest
import torch
from torch import nn

from client_sdk import OptimizerSpec, model_arrays
from client_sdk.local_model import finish_local_model, int8_scale, prepare_local_model
from client_sdk.tasks import get_task
from client_sdk.training import train_local
from client_sdk.weights import load_arrays
from simulations.batched import training
from simulations.batched.deltas import flat_deltas
from simulations.batched.layouts import BENCHMARK_SUFFIX, CUDNN_LAYOUTS, pick_layout
from simulations.batched.training import (
    LAYOUTS,
    NotVectorizable,
    check_sample_mean_loss,
    stack_clients,
    train_clients,
    vectorization_blocker,
)
from tests.helpers.batched import CPU
from tests.helpers.batched import client_data as _clients
from tests.helpers.batched import round_plan as _plan
from wire import encode_float32_rows, encode_update


def _reference(plan, data, seed):
    model = plan.task.build_model(seed=0)
    load_arrays(model, plan.global_arrays)
    prepare_local_model(
        model,
        masks=None if plan.masks is None else plan.masks.masks,
        qat=plan.qat,
        frozen=plan.frozen,
    )
    stats = train_local(model, plan.task, data, plan.schedule, torch.Generator().manual_seed(seed))
    finish_local_model(model)
    return model_arrays(model), stats


CASES = {
    "sgd-momentum": ("digits", {}, {}, False),
    "unequal-sizes-fedprox-3-epochs": (
        "synthetic",
        {},
        {"proximal-mu": 0.1, "local-epochs": 3},
        False,
    ),
    "adamw-weight-decay": (
        "digits",
        {"optimizer": OptimizerSpec(name="adamw", lr=0.01, weight_decay=0.01)},
        {},
        False,
    ),
    "pruned-qat": ("digits", {}, {"qat": True}, True),
    "frozen-first-layer": ("digits", {"frozen": ("0.",)}, {}, False),
    "cnn": ("tutorial-cnn:12", {}, {}, False),
}


@pytest.mark.parametrize(
    ("case", "layout"),
    [(case, "") for case in CASES] + [("cnn", layout) for layout in LAYOUTS],
)
def test_each_client_ends_where_the_sdk_loop_ends(case, layout):
    name, task_changes, config, prune = CASES[case]
    task = dataclasses.replace(get_task(name), **task_changes)
    plan = _plan(task, config, prune)
    data = _clients(task)
    seeds = [plan.seed_for(pid) for pid in range(len(data))]
    batch = stack_clients(data, CPU, channels_last=layout in ("", "packed"))
    chunk = train_clients(plan, batch, seeds, CPU, layout=layout)
    models = chunk.host_models(plan.global_arrays)
    for k, (d, seed) in enumerate(zip(data, seeds, strict=True)):
        expected, stats = _reference(plan, d, seed)
        assert chunk.stats[k].steps == stats.steps and chunk.stats[k].num_examples == len(d.y_train)
        if plan.qat:
            _assert_same_quantized_training(plan, expected, models[k])
            assert chunk.stats[k].mean_loss == pytest.approx(stats.mean_loss, rel=1e-3)
            continue
        worst = max(float(np.abs(expected[n] - models[k][n]).max()) for n in expected)
        assert worst < 1e-5, (case, k, worst)
        assert chunk.stats[k].mean_loss == pytest.approx(stats.mean_loss, rel=1e-5)
    if task.frozen:
        assert all(np.array_equal(m["0.weight"], plan.global_arrays["0.weight"]) for m in models)
    if prune:
        for n, mask in plan.masks.masks.items():
            assert all(np.all(m[n][~mask] == 0) for m in models)


def _assert_same_quantized_training(plan, expected, got):
    """QAT: weights on their int8 grid, and the same training up to rounding-boundary flips.

    Fake quantization rounds; a last-bit difference between vmap's batched matmul and the
    loop's (which CPUs and BLAS builds differ in) can move a weight across a rounding
    boundary, one int8 step, and the two trajectories then part by a step here and there
    (seen on an AMD EPYC with torch 2.13: 0.1-0.4 % of the update's norm). So the test holds
    each client to 2 % of its update's norm instead of 1e-5.
    """
    for name, weight in got.items():
        if weight.ndim >= 2:
            scale = int8_scale(torch.from_numpy(weight)).numpy()
            steps = weight / scale
            assert np.allclose(steps, np.round(steps), atol=1e-3), name

    def distance(a, b):
        return np.sqrt(sum(float(((a[n] - b[n]) ** 2).sum()) for n in expected))

    apart, moved = distance(expected, got), distance(expected, plan.global_arrays)
    assert apart < 0.02 * moved, (apart, moved)


def test_unequal_sizes_train_different_step_counts():
    task = get_task("synthetic")
    plan = _plan(task, {})
    data = _clients(task)
    sizes = {len(d.y_train) for d in data}
    chunk = train_clients(plan, stack_clients(data, CPU), [1, 2, 3, 4, 5], CPU)
    assert len(sizes) > 1
    assert {s.steps for s in chunk.stats} == {-(-n // task.batch_size) for n in sizes}


def test_vectorized_payloads_are_the_sdk_encoders_bytes():
    task = get_task("digits")
    plan = _plan(task, {}, prune=True)
    data = _clients(task, k=3)
    chunk = train_clients(plan, stack_clients(data, CPU), [7, 8, 9], CPU)
    rows, specs = flat_deltas(chunk, plan, CPU)
    payloads = encode_float32_rows(rows, specs, server_round=2, masks=plan.masks)
    for payload, local in zip(payloads, chunk.host_models(plan.global_arrays), strict=True):
        delta = {n: local[n] - g for n, g in plan.global_arrays.items()}
        assert payload == encode_update(delta, server_round=2, masks=plan.masks)


def _task_with(model_fn, **changes):
    return dataclasses.replace(get_task("digits"), model_fn=model_fn, **changes)


def test_models_vmap_cannot_train_are_named_with_the_reason():
    batchnorm = _task_with(lambda: nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8)))
    dropout = _task_with(lambda: nn.Sequential(nn.Linear(64, 8), nn.Dropout(0.5)))
    assert "BatchNorm" in vectorization_blocker(batchnorm)
    assert "dropout" in vectorization_blocker(dropout)
    assert vectorization_blocker(get_task("tutorial-cnn")) is None


def test_a_loss_that_is_not_a_per_sample_mean_is_refused():
    summed = _task_with(
        get_task("digits").model_fn,
        loss_fn=lambda logits, y: nn.functional.cross_entropy(logits, y, reduction="sum"),
    )
    data = _clients(get_task("digits"), k=1)[0]
    with pytest.raises(NotVectorizable, match="mean of per-sample"):
        check_sample_mean_loss(summed, data.x_train, data.y_train)
    check_sample_mean_loss(get_task("digits"), data.x_train, data.y_train)


def test_pick_layout_times_every_layout_and_skips_one_that_cannot_run():
    task = get_task("tutorial-cnn:12")
    plan = _plan(task, {})
    batch = stack_clients(_clients(task, k=3), CPU)
    best, benchmark, times = pick_layout(plan, batch, [1, 2, 3], CPU)
    assert set(times) == set(LAYOUTS) and times[best] == min(times.values()) and not benchmark

    class Viewing(nn.Module):  # .view() of a packed activation fails
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 2, 5), nn.Linear(2 * 28 * 28, 10)

        def forward(self, x):
            h = self.conv(x)
            return self.fc(h.view(h.shape[0], -1))

    viewing = _plan(dataclasses.replace(task, model_fn=Viewing), {})
    best, _, times = pick_layout(viewing, batch, [1, 2, 3], CPU)
    assert "packed" not in times and best in times


def test_on_cuda_the_cudnn_layouts_are_also_timed_in_benchmark_mode(monkeypatch):
    """Which candidates pick_layout times, and what it keeps (training replaced by a timed fake:
    this machine has no GPU; the real layouts are timed on one by benchmarks/gpu_check.sh)."""
    seen = []

    def fake_training(plan, batch, seeds, device, *, layout=""):
        fast = layout == "channels-last" and torch.backends.cudnn.benchmark
        seen.append((layout, torch.backends.cudnn.benchmark))
        time.sleep(0.001 if fast else 0.01)

    monkeypatch.setattr(training, "train_clients", fake_training)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    task = get_task("tutorial-cnn:12")
    batch = stack_clients(_clients(task, k=2), CPU)
    before = torch.backends.cudnn.benchmark
    best, benchmark, times = pick_layout(_plan(task, {}), batch, [1, 2], torch.device("cuda"))
    assert (best, benchmark) == ("channels-last", True)
    assert set(times) == set(LAYOUTS) | {f"{name}{BENCHMARK_SUFFIX}" for name in CUDNN_LAYOUTS}
    assert ("unfold", True) not in seen and len(seen) == 2 * len(times)
    assert torch.backends.cudnn.benchmark == before


def test_channels_last_storage_keeps_every_value():
    data = _clients(get_task("tutorial-cnn:12"), k=2)
    plain, packed = stack_clients(data, CPU), stack_clients(data, CPU, channels_last=True)
    assert torch.equal(plain.x, packed.x) and packed.x.shape == plain.x.shape
    assert packed.x.permute(0, 2, 3, 1).is_contiguous()
