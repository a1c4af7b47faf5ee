import numpy as np
from flwr.app import ConfigRecord

from server.federation import client_config
from simulations.app import client_data_of, simulated_client_data
from simulations.attacks import (
    SimulatedDropout,
    attack_hook,
    is_malicious,
    simulated_attack,
    simulated_clients,
)
from simulations.settings import SimulatedClientsSection
from simulations.settings import SimulationRunSettings as RunSettings
from tests.messages import node_context

DELTA = {"w": np.array([1.0, -2.0], np.float32)}


def test_the_first_fraction_of_partitions_attack():
    assert [is_malicious(p, 10, 0.2) for p in range(4)] == [True, True, False, False]
    assert not is_malicious(0, 10, 0.0)


def test_sign_flip_and_scale_change_only_malicious_updates():
    flip = SimulatedClientsSection(attack="sign-flip", malicious_fraction=0.2, attack_scale=10.0)
    config = ConfigRecord({"server-round": 1})
    flipped = simulated_attack(DELTA, node_context(1, 10), config, flip)
    assert flipped["w"].tolist() == [-10.0, 20.0]
    assert simulated_attack(DELTA, node_context(2, 10), config, flip) is DELTA
    scale = SimulatedClientsSection(attack="scale", malicious_fraction=0.2, attack_scale=10.0)
    assert simulated_attack(DELTA, node_context(0, 10), config, scale)["w"].tolist() == [10, -20]
    assert simulated_attack(DELTA, node_context(0, 10), config) is DELTA  # empty run config


def test_under_flwr_run_the_client_app_reads_its_run_config():
    """The attack reaches a simulated client through the run config, not the round config."""
    context = node_context(0, 10)
    context.run_config.update({"attack": "scale", "malicious-fraction": 0.5, "lr": 0.1})
    assert simulated_clients(context).attack == "scale"
    assert simulated_attack(DELTA, context, ConfigRecord())["w"].tolist() == [10.0, -20.0]


def test_the_client_app_splits_the_data_as_its_run_config_says_not_the_round_config():
    config = ConfigRecord({"task": "digits", "seed": 0, "partition": "shards:1"})  # ignored
    context = node_context(0, 4)
    context.run_config.update({"partition": "iid", "num-server-rounds": 2})
    iid = simulated_client_data(context, config)
    bound = client_data_of(RunSettings(partition="iid"))(node_context(0, 4), config)
    assert np.array_equal(bound.y_train, iid.y_train)  # in-process engines bind it
    context.run_config["partition"] = "shards:2"
    shards = simulated_client_data(context, config)
    assert len(np.unique(shards.y_train)) <= 2 < len(np.unique(iid.y_train))


def test_simulated_attacks_and_dropouts_are_not_sent_to_devices():
    run = RunSettings(attack="sign-flip", malicious_fraction=0.3, dropout_rate=0.2)
    sent = client_config(run, num_partitions=10)
    assert not {"partition", "attack", "malicious-fraction", "attack-scale", "dropout-rate"} & set(
        sent
    )
    assert attack_hook(run.section(SimulatedClientsSection)) is not None
    assert attack_hook(RunSettings().section(SimulatedClientsSection)) is None


def test_a_dropout_is_drawn_from_the_seed_and_round_in_every_engine():
    drop = SimulatedClientsSection(dropout_rate=0.5)
    config = ConfigRecord({"seed": 3, "server-round": 2})

    def dropped(hook):
        out = []
        for pid in range(20):
            try:
                hook(DELTA, node_context(pid, 20), config)
            except SimulatedDropout:
                out.append(pid)
        return out

    first = dropped(lambda *a: simulated_attack(*a, drop))
    assert 0 < len(first) < 20 and dropped(attack_hook(drop)) == first


def _model(engine, out, **run):
    from server import MODEL_FILE
    from simulations.runner import SimulationSettings, simulate

    run = RunSettings(num_server_rounds=1, min_available_nodes=4, partition="iid", **run)
    simulate(SimulationSettings(run=run, clients=4, out_dir=out, engine=engine))
    with np.load(out / MODEL_FILE) as saved:
        return {k: saved[k] for k in saved.files}


def test_both_engines_apply_the_attack_without_sending_it(tmp_path):
    attack = {"attack": "sign-flip", "malicious_fraction": 0.5, "attack_scale": 3.0}
    clean = _model("batched", tmp_path / "clean")
    batched = _model("batched", tmp_path / "batched", **attack)
    flower = _model("flower", tmp_path / "flower", **attack)
    assert any(not np.allclose(clean[k], batched[k], atol=1e-3) for k in clean)
    assert all(np.allclose(flower[k], batched[k], atol=1e-4) for k in batched)
