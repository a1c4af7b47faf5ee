import numpy as np
from flwr.app import ConfigRecord

from simulations.attacks import is_malicious, simulated_attack
from tests.messages import node_context

DELTA = {"w": np.array([1.0, -2.0], np.float32)}


def test_the_first_fraction_of_partitions_attack():
    assert [is_malicious(p, 10, 0.2) for p in range(4)] == [True, True, False, False]
    assert not is_malicious(0, 10, 0.0)


def test_sign_flip_and_scale_change_only_malicious_updates():
    config = ConfigRecord({"attack": "sign-flip", "malicious-fraction": 0.2, "attack-scale": 10.0})
    flipped = simulated_attack(DELTA, node_context(1, 10), config)
    assert flipped["w"].tolist() == [-10.0, 20.0]
    assert simulated_attack(DELTA, node_context(2, 10), config) is DELTA
    config["attack"] = "scale"
    assert simulated_attack(DELTA, node_context(0, 10), config)["w"].tolist() == [10.0, -20.0]
    assert simulated_attack(DELTA, node_context(0, 10), ConfigRecord()) is DELTA
