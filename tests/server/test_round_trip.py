"""One training round through the server's wire adapter and the SDK's ClientApp, in process.

The adapter's messages are handed to real ClientApps (real torch training on digits) and their
replies back to the adapter: pruning mask, quantized uploads, error feedback, 8-bit download
and frozen layers all cross the same records they cross in a deployment.
"""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from client_sdk import build_client_app, model_arrays
from client_sdk.tasks import get_task
from client_sdk.upload import RESIDUAL_KEY
from server import RunSettings
from strategies import StrategySettings, build_strategy
from tests.helpers.simulated import iid_data as simulated_client_data
from tests.messages import node_context
from tests.strategies.fake_grid import QueryAnsweringGrid
from wire import DOWNLOAD_RECORD_KEY, MASK_FIELD, PAYLOAD_FIELD, UPDATE_RECORD_KEY, keys

NODES = {101: 0, 102: 1, 103: 2}


def _round(strategy, arrays, contexts, server_round, client_app):
    # one local epoch (the task's own is 5): the round's records are the point, not the accuracy
    config = ConfigRecord({"task": "digits", "seed": 0, "num-partitions": 3, "local-epochs": 1})
    messages = list(
        strategy.configure_train(server_round, arrays, config, QueryAnsweringGrid(NODES))
    )
    replies = [client_app(msg, contexts[msg.metadata.dst_node_id]) for msg in messages]
    sizes = [len(r.content.config_records[UPDATE_RECORD_KEY][PAYLOAD_FIELD]) for r in replies]
    new_arrays, _ = strategy.aggregate_train(server_round, replies)
    return messages, replies, sizes, new_arrays


@pytest.fixture
def setup():
    contexts = {node: node_context(pid, 3, node_id=node) for node, pid in NODES.items()}
    client_app = build_client_app(get_task, simulated_client_data)
    initial = model_arrays(get_task("digits").build_model(seed=0))
    return contexts, client_app, ArrayRecord({k: Array(v) for k, v in initial.items()})


def test_pruned_quantized_round_with_error_feedback_and_8_bit_download(setup):
    contexts, client_app, arrays = setup
    settings = RunSettings(
        prune=0.9, prune_schedule="constant", quant_bits=4, error_feedback=True, download_bits=8
    )
    strategy = build_strategy(StrategySettings(compression=settings.compression()))
    messages, replies, sizes, new = _round(strategy, arrays, contexts, 1, client_app)
    content = messages[0].content
    assert "arrays" not in content and DOWNLOAD_RECORD_KEY in content.config_records
    assert MASK_FIELD in content["config"] and content["config"]["quant-bits"] == 4
    stats = strategy.rounds[1]
    assert (
        stats.accepted == 3
        and not stats.rejected
        and stats.sparsity == pytest.approx(0.9, abs=1e-3)
    )
    float_bytes = sum(a.nbytes for a in model_arrays(get_task("digits").build_model(0)).values())
    assert max(sizes) < float_bytes / 32  # the upload is more than 32x smaller than float32
    assert stats.download_bytes_per_client < float_bytes / 3
    new_w = new["0.weight"].numpy()
    mask = strategy.masks.masks["0.weight"]
    assert np.all(new_w[~mask] == 0) and np.any(new_w[mask] != 0)
    assert all(RESIDUAL_KEY in ctx.state.array_records for ctx in contexts.values())
    # the next round: the residual is used, the mask is recomputed from the new model
    _, replies2, _, _ = _round(strategy, new, contexts, 2, client_app)
    assert strategy.rounds[2].accepted == 3
    assert all(r.content.metric_records["metrics"]["residual-norm"] > 0 for r in replies2)


def test_an_update_made_under_another_mask_is_rejected_and_the_round_goes_on(setup):
    contexts, client_app, arrays = setup
    compression = RunSettings(prune=0.5, prune_schedule="constant").compression()
    strategy = build_strategy(StrategySettings(compression=compression))
    messages = list(
        strategy.configure_train(
            1,
            arrays,
            ConfigRecord({"task": "digits"}),
            QueryAnsweringGrid(NODES),
        )
    )
    other = build_strategy(
        StrategySettings(
            compression=RunSettings(prune=0.7, prune_schedule="constant").compression()
        )
    )
    stale = list(
        other.configure_train(
            1,
            arrays,
            ConfigRecord({"task": "digits"}),
            QueryAnsweringGrid(NODES),
        )
    )
    replies = [client_app(m, contexts[m.metadata.dst_node_id]) for m in messages[:1] + stale[1:2]]
    # a client that sends its full header (no announced digest) meets the mask check itself;
    # one that references the other round's header is an unknown reference (wire.header_ref)
    stale[2].content["config"].pop(keys.HEADER_REF)
    replies += [client_app(m, contexts[m.metadata.dst_node_id]) for m in stale[2:]]
    new, _ = strategy.aggregate_train(1, replies)
    assert new is not None and strategy.rounds[1].accepted == 1
    assert sorted(r.reason for r in strategy.rounds[1].rejected) == ["bad-header", "mask-mismatch"]


def test_frozen_layers_are_never_uploaded(setup):
    contexts, client_app, arrays = setup
    strategy = build_strategy(StrategySettings(compression=RunSettings(freeze="0.").compression()))
    _, replies, sizes, new = _round(strategy, arrays, contexts, 1, client_app)
    head_bytes = sum(
        a.nbytes
        for k, a in model_arrays(get_task("digits").build_model(0)).items()
        if k.startswith("2.")
    )
    assert all(head_bytes < size < head_bytes + 1000 for size in sizes)
    assert np.array_equal(new["0.weight"].numpy(), arrays["0.weight"].numpy())
    assert not np.array_equal(new["2.weight"].numpy(), arrays["2.weight"].numpy())
