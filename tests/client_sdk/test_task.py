import numpy as np
import pytest
import torch

from client_sdk import (
    ClientData,
    LocalSchedule,
    OptimizerSpec,
    Task,
    TaskConfigError,
    evaluate_model,
    model_arrays,
    train_local,
)
from client_sdk.tasks import get_task
from client_sdk.tasks.digits import digits_task
from simulations.partitioners import IidPartitioner


def _digits_client(partition_id=0, num=5) -> ClientData:
    return digits_task().data.client_data(partition_id, num, partitioner=IidPartitioner(), seed=0)


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    task = digits_task()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = model_arrays(task.build_model(seed=5))
    assert torch.rand(1) == before
    b = model_arrays(task.build_model(seed=5))
    c = model_arrays(task.build_model(seed=6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


@pytest.mark.parametrize(
    "optimizer",
    [OptimizerSpec(name="sgd", lr=0.1, momentum=0.9), OptimizerSpec(name="adamw", lr=0.01)],
)
def test_local_training_on_real_digits_lowers_the_loss(optimizer):
    task = Task(
        name="d", model_fn=digits_task().model_fn, data=digits_task().data, optimizer=optimizer
    )
    data = _digits_client()
    model = task.build_model(seed=0)
    loss_before, _ = evaluate_model(model, task, data.x_train, data.y_train)
    schedule = LocalSchedule(lr=optimizer.lr, epochs=3, batch_size=16)
    stats = train_local(model, task, data, schedule, torch.Generator().manual_seed(0))
    loss_after, acc_after = evaluate_model(model, task, data.x_train, data.y_train)
    assert stats.num_examples == data.num_train and stats.steps == 3 * -(-data.num_train // 16)
    assert loss_after < 0.5 * loss_before
    assert acc_after > 0.8


def test_same_generator_seed_gives_identical_local_models():
    task, data = digits_task(), _digits_client()
    out = []
    for _ in range(2):
        model = task.build_model(seed=0)
        train_local(
            model,
            task,
            data,
            LocalSchedule(lr=0.1, epochs=1, batch_size=8),
            torch.Generator().manual_seed(4),
        )
        out.append(model_arrays(model))
    assert all(np.array_equal(out[0][k], out[1][k]) for k in out[0])


def test_proximal_term_keeps_the_model_closer_to_the_global_one():
    task, data = digits_task(), _digits_client()
    start = model_arrays(task.build_model(seed=0))

    def drift(mu: float) -> float:
        model = task.build_model(seed=0)
        train_local(
            model,
            task,
            data,
            LocalSchedule(lr=0.1, epochs=3, batch_size=8, proximal_mu=mu),
            torch.Generator().manual_seed(1),
        )
        return sum(float(((v - start[k]) ** 2).sum()) for k, v in model_arrays(model).items())

    assert drift(1.0) < drift(0.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: OptimizerSpec(name="rmsprop"),
        lambda: OptimizerSpec(lr=0),
        lambda: OptimizerSpec(momentum=1.0),
        lambda: Task(
            name="x",
            model_fn=lambda: torch.nn.Linear(1, 1),
            data=digits_task().data,
            local_epochs=0,
        ),
        lambda: LocalSchedule(lr=0.1, epochs=0, batch_size=1),
        lambda: get_task("imagenet"),
        lambda: get_task("synthetic:1"),
    ],
)
def test_bad_configuration_gets_a_typed_error(make):
    with pytest.raises(TaskConfigError):
        make()


def test_training_without_examples_is_refused():
    empty = ClientData(
        np.zeros((0, 64), np.float32), np.zeros(0, np.int64), np.zeros((0, 64)), np.zeros(0)
    )
    with pytest.raises(TaskConfigError, match="no training examples"):
        train_local(
            digits_task().build_model(0),
            digits_task(),
            empty,
            LocalSchedule(lr=0.1, epochs=1, batch_size=1),
            torch.Generator(),
        )
