"""The layout tuner: its state is explicit (None until chosen), chosen once, given up once."""

import pytest

from client_sdk.tasks import get_task
from simulations.batched.layouts import LayoutTuner
from simulations.batched.training import LAYOUTS, stack_clients
from tests.helpers.batched import CPU
from tests.helpers.batched import client_data as _clients
from tests.helpers.batched import round_plan as _plan


def test_on_a_cpu_the_default_is_packed_and_stacks_images_channels_last(monkeypatch):
    monkeypatch.delenv("POLLEN_LAYOUT", raising=False)
    tuner = LayoutTuner(CPU)
    assert tuner.layout is None  # nothing chosen before the first chunk
    assert tuner.stored_channels_last() and tuner.layout == "packed"
    task = get_task("digits")
    batch = stack_clients(_clients(task, k=2), CPU)
    assert tuner.layout_for(_plan(task, {}), batch, [1, 2]) == "packed" and not tuner.timings


def test_an_open_choice_is_measured_once_on_images_and_grouped_for_other_inputs():
    cnn = get_task("tutorial-cnn:6")
    images = stack_clients(_clients(cnn, k=2), CPU)
    tuner = LayoutTuner(CPU, defaulted=True)  # as CUDA leaves it: measure on the first chunk
    chosen = tuner.layout_for(_plan(cnn, {}), images, [1, 2])
    assert chosen in LAYOUTS and set(tuner.timings) == set(LAYOUTS)
    assert tuner.timings[chosen] == min(tuner.timings.values())
    timed = dict(tuner.timings)
    assert tuner.layout_for(_plan(cnn, {}), images, [1, 2]) == chosen and tuner.timings == timed

    digits = get_task("digits")
    flat = LayoutTuner(CPU, defaulted=True)
    batch = stack_clients(_clients(digits, k=2), CPU)
    assert flat.layout_for(_plan(digits, {}), batch, [1, 2]) == "grouped" and not flat.timings


def test_the_kernels_are_given_up_for_vmaps_rules_on_images_only(caplog):
    images = stack_clients(_clients(get_task("tutorial-cnn:6"), k=2), CPU)
    flat = stack_clients(_clients(get_task("digits"), k=2), CPU)
    tuner = LayoutTuner(CPU, layout="packed", defaulted=True)
    assert not tuner.give_up_kernels(flat, RuntimeError("x")) and tuner.layout == "packed"
    assert tuner.give_up_kernels(images, RuntimeError("view size")) and tuner.layout == "grouped"
    assert "packed kernels could not run" in caplog.text
    assert not tuner.give_up_kernels(images, RuntimeError("again"))  # nothing left to give up


def test_an_override_is_read_at_the_first_chunk_and_a_wrong_one_refused(monkeypatch):
    tuner = LayoutTuner(CPU)
    monkeypatch.setenv("POLLEN_LAYOUT", "unfold")
    assert not tuner.stored_channels_last() and tuner.layout == "unfold"
    monkeypatch.setenv("POLLEN_LAYOUT", "diagonal")
    with pytest.raises(ValueError, match="POLLEN_LAYOUT='diagonal'"):
        LayoutTuner(CPU).stored_channels_last()
