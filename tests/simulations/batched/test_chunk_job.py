"""A chunk's rows: messages, contexts and trained clients stay aligned when a part is taken."""

import pytest
import torch
from flwr.app import MessageType, RecordDict

from client_sdk import TrainStats
from simulations.batched.chunk_job import ChunkJob
from simulations.batched.training import TrainedChunk
from tests.helpers.batched import CPU
from tests.messages import message, node_context


def _job(k=4):
    messages = [
        message(RecordDict(), src=0, dst=i, message_type=MessageType.TRAIN) for i in range(k)
    ]
    contexts = [node_context(i, k, node_id=100 + i) for i in range(k)]
    stats = [TrainStats(mean_loss=float(i), num_examples=i + 1, steps=1) for i in range(k)]
    local = {"w": torch.arange(k * 3, dtype=torch.float32).reshape(k, 3)}
    return ChunkJob(None, messages, contexts, TrainedChunk(local, stats), CPU)


@pytest.mark.parametrize("picked", [slice(1, 3), [3, 0]])
def test_a_part_keeps_each_rows_message_context_update_and_stats_together(picked):
    job = _job()
    part = job.rows(picked)
    rows = range(4)[picked] if isinstance(picked, slice) else picked
    assert len(part) == len(rows)
    for i, row in enumerate(rows):
        assert part.messages[i] is job.messages[row] and part.contexts[i] is job.contexts[row]
        assert part.stats[i] == job.stats[row]
        assert torch.equal(part.trained.local["w"][i], job.trained.local["w"][row])


def test_rows_that_do_not_line_up_are_refused():
    job = _job()
    with pytest.raises(ValueError, match="one message, context and trained client per row"):
        ChunkJob(job.plan, job.messages[:3], job.contexts, job.trained, CPU)
