"""Run-level fuzz: thousands of hostile replies through the real ServerApp on an in-memory grid.

Honest nodes run the real SDK ClientApp (real torch training on digits); every other node
answers each message (query, train, evaluate, secure-aggregation stages) with a mutated copy of
an honest reply (tests/hostile.py). The run must finish, its model must stay finite, and every
train reply must be accounted for: accepted, or rejected / failed with a reason.
"""

import json
from collections import Counter

import numpy as np
import pytest

from client_sdk import build_client_app
from client_sdk.tasks import get_task
from server import RunSettings
from server.app import build_server_app
from simulations.batched import run_server_app
from tests.helpers.simulated import iid_data as simulated_client_data
from tests.hostile import HostileGrid
from wire import RejectReason

KNOWN_REASONS = {r.value for r in RejectReason} | {"client-error"}


def _run(tmp_path, *, nodes: int, rounds: int, honest: int, grid_options=None, **overrides):
    values = {
        "task": "digits",
        "num_server_rounds": rounds,
        "fraction_train": 0.9,
        "fraction_evaluate": 0.2,
        "min_available_nodes": nodes,
        "num_partitions": nodes,
        "max_failed_rounds": 0,
        "round_timeout": 5.0,
        "local_epochs": 1,
    }
    settings = RunSettings(**{**values, **overrides})
    grid = HostileGrid(
        build_client_app(get_task, simulated_client_data),
        nodes,
        set(range(1, honest + 1)),
        **(grid_options or {}),
    )
    run_server_app(build_server_app(settings, out_dir=tmp_path), grid)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final = np.load(tmp_path / "final_model.npz")
    return grid, rows, final


def _rejections(rows) -> Counter:
    reasons: Counter = Counter()
    for row in rows[1:]:
        for item in row.get("rejections", []) + row.get("failures", []):
            assert item["reason"] in KNOWN_REASONS and item["detail"], item
            assert len(item["detail"]) < 400  # a client cannot flood the log or metrics
            reasons[item["reason"]] += 1
        for item in row.get("evaluate_rejections", []):
            assert item["reason"] in KNOWN_REASONS and item["detail"], item
            reasons["evaluate:" + item["reason"]] += 1
    return reasons


def test_ten_thousand_hostile_replies_never_end_or_poison_the_run(tmp_path):
    grid, rows, final = _run(tmp_path, nodes=250, rounds=40, honest=5)
    assert sum(grid.sent.values()) >= 10_000, grid.sent
    assert [row["round"] for row in rows] == list(range(41))  # every round ran
    assert all(np.isfinite(final[name]).all() for name in final.files)
    assert all(np.isfinite(row["accuracy"]) for row in rows)
    # nothing is lost: each train reply was accepted, rejected or counted as a failure
    for row, returned in zip(rows[1:], grid.train_replies, strict=True):
        handled = row["accepted_updates"] + row["rejected_updates"] + row["failed_clients"]
        assert handled == returned, row["round"]
    reasons = _rejections(rows)
    print("hostile replies by message type:", dict(grid.sent))
    print("rejections by reason:", dict(reasons.most_common()))
    for reason in ("bad-header", "bad-metrics", "bad-weight", "non-finite", "out-of-bounds"):
        assert reasons[reason] > 0, reason  # each family of fault was met and named
    assert reasons["malformed"] == 0  # every fault met a check that names it
    assert sum(row["accepted_updates"] for row in rows[1:]) > 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": "fedmedian", "quant_bits": 4, "quant_chunk": 64},
        {"strategy": "fedadam", "prune": 0.5, "prune_schedule": "constant", "topk": 0.2},
    ],
    ids=["fedmedian-4bit", "fedadam-pruned-topk"],
)
def test_hostile_replies_against_robust_and_server_optimizer_strategies(tmp_path, overrides):
    grid, rows, final = _run(tmp_path, nodes=60, rounds=5, honest=4, **overrides)
    assert len(rows) == 6 and all(np.isfinite(final[name]).all() for name in final.files)
    for row, returned in zip(rows[1:], grid.train_replies, strict=True):
        handled = row["accepted_updates"] + row["rejected_updates"] + row["failed_clients"]
        assert handled == returned
    assert _rejections(rows)


def test_hostile_secure_aggregation_stage_replies(tmp_path):
    """Hostile nodes mutate a third of their own replies at every SecAgg+ stage (keys, shares,
    masked upload, unmasking); the run goes on and its model stays finite."""
    grid, rows, final = _run(
        tmp_path,
        nodes=16,
        rounds=6,
        honest=8,
        grid_options={"own_replies": True, "rate": 0.3},
        secure_agg=True,
        fraction_evaluate=0.0,
    )
    assert {"query.secagg_keys", "query.secagg_shares", "train", "query.secagg_unmask"} <= set(
        grid.sent
    ), grid.sent
    assert len(rows) == 7 and all(np.isfinite(final[name]).all() for name in final.files)
    reasons = _rejections(rows)
    print("secure: hostile replies by stage:", dict(grid.sent), "rejections:", dict(reasons))
    assert sum(row["accepted_updates"] for row in rows[1:]) > 0
