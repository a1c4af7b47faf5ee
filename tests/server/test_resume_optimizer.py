"""A resumed run keeps its server optimizer's state: FedAdam's moments and FedAvgM's momentum
travel in the checkpoint, so the resumed run ends on the uninterrupted run's model."""

import numpy as np
import pytest

from server import MODEL_FILE
from server.checkpoint import CHECKPOINT_FILE, ResumeError, load_checkpoint
from simulations.runner import SimulationSettings, simulate
from simulations.settings import SimulationRunSettings


def _run(out, strategy, rounds, resume=False):
    run = SimulationRunSettings(
        strategy=strategy,
        num_server_rounds=rounds,
        partition="iid",
        seed=5,
        server_lr=0.5,
        server_momentum=0.9,
        fraction_train=0.5,
        resume=resume,
    )
    simulate(SimulationSettings(run=run, clients=6, out_dir=out, engine="batched"))


@pytest.mark.parametrize("strategy, state", [("fedavgm", "momentum_vector"), ("fedadam", "m_t")])
def test_stopped_and_resumed_ends_on_the_uninterrupted_model(tmp_path, strategy, state):
    _run(tmp_path / "whole", strategy, 3)
    _run(tmp_path / "stopped", strategy, 2)
    checkpoint = load_checkpoint(tmp_path / "stopped")
    assert set(checkpoint.optimizer[state]) == set(checkpoint.arrays)  # by array name
    _run(tmp_path / "stopped", strategy, 3, resume=True)
    whole, resumed = (np.load(tmp_path / d / MODEL_FILE) for d in ("whole", "stopped"))
    assert whole.files == resumed.files
    assert all(np.array_equal(whole[k], resumed[k]) for k in whole.files)


@pytest.mark.parametrize("strategy, state", [("fedavgm", "momentum_vector"), ("fedadam", "v_t")])
def test_an_optimizer_state_that_misses_an_array_is_refused(tmp_path, strategy, state):
    """Refused at resume, not a KeyError in every later round (Flower indexes it by array)."""
    out = tmp_path / "stopped"
    _run(out, strategy, 2)
    path = out / CHECKPOINT_FILE
    with np.load(path) as saved:
        entries = {k: saved[k] for k in saved.files}
    del entries[next(k for k in entries if k.startswith(f"opt/{state}/"))]
    np.savez(path, **entries)
    with pytest.raises(ResumeError, match=f"{state}.*does not cover"):
        _run(out, strategy, 3, resume=True)
