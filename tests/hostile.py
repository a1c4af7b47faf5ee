"""Hostile replies for run-level fuzz tests: an honest reply, mutated the ways a client can.

:class:`HostileGrid` is an in-memory Flower Grid: honest nodes answer every message (train,
evaluate, query, each secure-aggregation stage) through the real SDK ClientApp; each hostile
node answers with a copy of an honest reply to the same kind of message, mutated by one or two
of the families below (payload bytes, header fields, decoded values, metrics, weights, record
structure, any ConfigRecord field's type, pool fields, error replies).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from tests.messages import node_context
from wire import PAYLOAD_FIELD, POOL_ID_FIELD, POOL_SIZE_FIELD, POOL_WEIGHT_FIELD, keys
from wire.format import read_header

_PREFIX = struct.Struct("<4sHI")
HOSTILE_NUMBERS = [
    float("inf"),
    float("-inf"),
    float("nan"),
    1e39,
    3.4e38,
    -2e38,
    0,
    -1,
    2**62,
    2**63 - 1,
    1e300,
    1.5,
    4.0,
    True,
]
HOSTILE_VALUES = [
    *HOSTILE_NUMBERS,
    "x",
    "",
    "\u00e9" * 5000,
    b"",
    b"\x00" * 64,
    b"\xff" * 40,
    [1, 2, 3],
    [],
    ["a", "b"],
    [1.5, float("nan")],
    [b"\x00"] * 3,
    False,
]


def _payload_parts(payload: bytes) -> tuple[dict, bytes] | None:
    try:
        _, _, header_len = _PREFIX.unpack_from(payload, 0)
        header = read_header(payload)  # either format version's header
        return header, payload[_PREFIX.size + header_len :]
    except Exception:  # noqa: BLE001 - not a payload: nothing to rewrite
        return None


def _frame(header_json: bytes, body: bytes) -> bytes:
    compressed = zlib.compress(header_json, 6)
    return _PREFIX.pack(b"PLNW", 1, len(compressed)) + compressed + body


def _header_mutation(header: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """A header that is valid JSON but hostile in one field (or one that is barely JSON)."""
    kind = int(rng.integers(0, 12))
    stages = header.get("stages", [])
    value_stage = stages[-1] if stages else {"params": {}}
    if kind == 0:  # nests past the JSON parser's recursion limit
        return _frame(b'{"format":1,"round":1,"x":' + b"[" * 5000 + b"]" * 5000 + b"}", body)
    if kind == 1:  # an integer past Python's int-parsing limit
        return _frame(b'{"format":1,"round":' + b"9" * 5000 + b"}", body)
    if kind == 2 and header.get("tensors"):
        header["tensors"][0]["dtype"] = [["float32"]] if rng.random() < 0.5 else {"a": 1}
    elif kind == 3:
        value_stage.setdefault("params", {})["bits"] = [4.0, True, 3, "8", None][
            int(rng.integers(0, 5))
        ]
    elif kind == 4:
        value_stage.setdefault("params", {})["chunk"] = [True, 0, 2**40, 1.5, -8][
            int(rng.integers(0, 5))
        ]
    elif kind == 5 and header.get("tensors"):
        header["tensors"][0]["shape"] = [2**30, 2**30, 2**30]
    elif kind == 6:
        header["sections"] = [[s[0], 2**62] for s in header.get("sections", [])] or [1]
    elif kind == 7:
        header["junk"] = ["y" * 1000] * 500  # a large header that still parses
    elif kind == 8 and stages:
        stages[0]["params"] = {"mask": [1], "count": 1.0}
    elif kind == 9:
        header["round"] = [True, -1, 2**70, 1.0][int(rng.integers(0, 4))]
    elif kind == 10:
        header["stages"] = list(reversed(stages)) + [{"name": "rot13", "params": {}}]
    else:
        header["tensors"] = [{"name": str(i), "shape": [1], "dtype": "float32"} for i in range(3)]
    return _frame(json.dumps(header).encode(), body)


def _value_mutation(header: dict, body: bytes, rng: np.random.Generator) -> bytes:
    """Sections rewritten with values that are each finite but poison an average."""
    stages = header.get("stages", [])
    name = stages[-1]["name"] if stages else ""
    raw = bytearray(body)
    if name == "float32":
        values = np.frombuffer(bytes(raw), dtype="<f4").copy()
        pick = [3.4e38, -3.4e38, np.nan, np.inf, 1e7][int(rng.integers(0, 5))]
        values[rng.integers(0, values.size, size=max(1, values.size // 10))] = pick
        return _frame(json.dumps(header).encode(), values.astype("<f4").tobytes())
    if name == "quantize":
        offset, count = 0, 0
        for section, size in header["sections"]:
            if section == "scales":
                count = size // 8
                break
            offset += size
        scales = np.frombuffer(bytes(raw[offset : offset + 8 * count]), dtype="<f4").copy()
        lo_hi = [(-2e38, 2e38), (3.3e38, 3.4e38), (1.0, -1.0), (np.nan, 0.0)][
            int(rng.integers(0, 4))
        ]
        scales = scales.reshape(-1, 2)
        scales[:] = lo_hi
        raw[offset : offset + 8 * count] = scales.astype("<f4").tobytes()
        return _frame(json.dumps(header).encode(), bytes(raw))
    return _frame(json.dumps(header).encode(), bytes(raw))


def _mutate_bytes(payload: bytes, rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(0, 6))
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 600)))
    if kind == 1:
        raw = bytearray(payload)
        for pos in rng.integers(0, max(len(raw), 1), size=int(rng.integers(1, 6))):
            if raw:
                raw[int(pos)] = int(rng.integers(0, 256))
        return bytes(raw)
    if kind == 2:
        return payload[: int(rng.integers(0, len(payload) + 1))]
    if kind == 3:
        return payload + rng.bytes(int(rng.integers(1, 5000)))
    parts = _payload_parts(payload)
    if parts is None:
        return payload
    header, body = parts
    try:
        if kind == 4:
            return _header_mutation(header, body, rng)
        return _value_mutation(header, body, rng)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return payload  # an earlier mutation left nothing this one can rewrite


def _mutate_metrics(content: RecordDict, rng: np.random.Generator) -> None:
    key = next((k for k, v in content.items() if isinstance(v, MetricRecord)), "metrics")
    record = content.get(key)
    values = dict(record) if isinstance(record, MetricRecord) else {}
    kind = int(rng.integers(0, 8))
    if kind == 0:
        values["num-examples"] = HOSTILE_NUMBERS[int(rng.integers(0, len(HOSTILE_NUMBERS)))]
    elif kind == 1:  # lists whose lengths differ from client to client
        values["train-loss"] = [float(v) for v in rng.random(int(rng.integers(0, 5)))]
    elif kind == 2:
        values["big"] = [1.0] * int(rng.integers(4000, 20000))
    elif kind == 3:
        values.update({f"k{i}": float(i) for i in range(int(rng.integers(200, 400)))})
    elif kind == 4:
        values[["partition-id", "train-loss", "upload-bytes"][int(rng.integers(0, 3))]] = (
            HOSTILE_NUMBERS[int(rng.integers(0, len(HOSTILE_NUMBERS)))]
        )
    elif kind == 5:  # not a MetricRecord at all
        content[key] = ConfigRecord({"num-examples": "many", "train-loss": b"\x00"})
        return
    elif kind == 6:
        content.pop(key, None)
        return
    else:
        values["partition-id"] = [1, 2]
    try:
        content[key] = MetricRecord(values)
    except Exception:  # noqa: BLE001 - Flower refuses the value (e.g. a bool): send it raw
        bypass = MetricRecord()
        bypass._data = values  # what a client with its own serializer could put on the wire
        content[key] = bypass


def _mutate_config_fields(content: RecordDict, rng: np.random.Generator) -> None:
    """Any ConfigRecord field (payloads, SecAgg keys, shares, ids) gets a hostile value."""
    configs = [(k, v) for k, v in content.items() if isinstance(v, ConfigRecord)]
    if not configs:
        content["config"] = ConfigRecord({"x": 1})
        return
    name, record = configs[int(rng.integers(0, len(configs)))]
    values = dict(record)
    if values and rng.random() < 0.8:
        field = list(values)[int(rng.integers(0, len(values)))]
        values[field] = HOSTILE_VALUES[int(rng.integers(0, len(HOSTILE_VALUES)))]
    else:
        values.pop(next(iter(values), "x"), None)
    try:
        content[name] = ConfigRecord(values)
    except Exception:  # noqa: BLE001 - a value Flower's ConfigRecord refuses: send it raw
        bypass = ConfigRecord()
        bypass._data = values
        content[name] = bypass


def _mutate_structure(content: RecordDict, rng: np.random.Generator) -> RecordDict:
    kind = int(rng.integers(0, 5))
    if kind == 0:
        return RecordDict()
    if kind == 1:  # every record renamed
        return RecordDict({f"r{i}": v for i, v in enumerate(content.values())})
    if kind == 2:
        name = next(iter(content.keys()), "x")
        content[name] = ArrayRecord()
        return content
    if kind == 3:
        content["extra"] = MetricRecord({"a": 1.0})
        content["more"] = ConfigRecord({"b": b"\x00" * 10})
        return content
    return RecordDict({"metrics": MetricRecord({"num-examples": 10})})


def _mutate_pool(content: RecordDict, rng: np.random.Generator) -> None:
    for name, record in content.items():
        if isinstance(record, ConfigRecord) and PAYLOAD_FIELD in record:
            values = dict(record)
            values[POOL_ID_FIELD] = f"pool{int(rng.integers(0, 3))}"
            if rng.random() < 0.5:
                values[POOL_SIZE_FIELD] = int(rng.integers(0, 4))
                values[POOL_WEIGHT_FIELD] = float(rng.choice([1.0, np.nan, 1e30]))
            content[name] = ConfigRecord(values)


def _mutate_payloads(content: RecordDict, rng: np.random.Generator) -> None:
    for name, record in content.items():
        if isinstance(record, ConfigRecord):
            values = dict(record)
            bytes_fields = [k for k, v in values.items() if isinstance(v, bytes)]
            if bytes_fields:
                field = bytes_fields[int(rng.integers(0, len(bytes_fields)))]
                values[field] = _mutate_bytes(values[field], rng)
                content[name] = ConfigRecord(values)
                return


MUTATIONS: dict[str, Callable[[RecordDict, np.random.Generator], RecordDict | None]] = {
    "payload": _mutate_payloads,
    "metrics": _mutate_metrics,
    "config-field": _mutate_config_fields,
    "structure": _mutate_structure,
    "pool": _mutate_pool,
}


def hostile_reply(honest: Message, request: Message, rng: np.random.Generator) -> Message:
    """A reply to ``request`` made from ``honest``'s content with 1-2 mutations (or an error)."""
    if rng.random() < 0.05:
        reason = "boom " * int(rng.integers(1, 20000))
        return Message(Error(code=int(rng.integers(0, 10)), reason=reason), reply_to=request)
    content = RecordDict(honest.content.copy()) if honest.has_content() else RecordDict()
    families = list(MUTATIONS)
    for _ in range(int(rng.integers(1, 3))):
        mutate = MUTATIONS[families[int(rng.integers(0, len(families)))]]
        changed = mutate(content, rng)
        if changed is not None:
            content = changed
    return Message(content=content, reply_to=request)


class HostileGrid:
    """An in-memory Grid: nodes ``honest`` answer with the real ClientApp, the rest are hostile."""

    def __init__(
        self,
        client_app,
        num_nodes: int,
        honest: set[int],
        seed: int = 0,
        *,
        own_replies: bool = False,
        rate: float = 1.0,
    ) -> None:
        """``own_replies``: a hostile node mutates the reply it would send itself (so its
        secure-aggregation identity holds and later stages are reached), each with
        probability ``rate``; else it mutates a copy of an honest node's reply."""
        self.client_app = client_app
        self.own_replies = own_replies
        self.rate = rate
        self.nodes = list(range(1, num_nodes + 1))
        self.honest = honest
        self.rng = np.random.default_rng(seed)
        self.contexts: dict[int, Context] = {
            node: node_context(node - 1, num_nodes, node_id=node) for node in self.nodes
        }
        self.sent = Counter()  # hostile replies by message type
        self.train_replies: list[int] = []  # train replies returned per train request batch

    def _answer(self, msg: Message, node: int) -> Message:
        """The ClientApp's reply; an exception in it is an error reply, as Flower sends one."""
        try:
            return self.client_app(msg, self.contexts[node])
        except Exception as err:  # noqa: BLE001 - Flower's runtime does the same
            return Message(Error(code=3, reason=f"{type(err).__name__}: {err}"), reply_to=msg)

    def set_run(self, run) -> None:  # what run_server_app hands a grid
        self.run = run

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        """Every message's reply; in half the train batches (drawn) the honest nodes do not
        see the announced header digest, so they send full headers for hostile nodes to
        rewrite field by field (the other half's references meet the byte mutations)."""
        messages = list(messages)
        hidden: list[tuple[ConfigRecord, bytes]] = []
        if messages and messages[0].metadata.message_type == "train" and self.rng.random() < 0.5:
            for msg in messages:
                config = msg.content.config_records.get("config")
                if config is not None and keys.HEADER_REF in config:
                    hidden.append((config, config.pop(keys.HEADER_REF)))
        try:
            return self._replies(messages)
        finally:
            for config, digest in hidden:
                config[keys.HEADER_REF] = digest

    def _replies(self, messages: list[Message]) -> list[Message]:
        honest_replies: dict[str, list[Message]] = {}
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.honest:
                reply = self._answer(msg, node)
                honest_replies.setdefault(msg.metadata.message_type, []).append(reply)
                replies.append(reply)
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.honest:
                continue
            pool = honest_replies.setdefault(msg.metadata.message_type, [])
            if self.own_replies or not pool:  # answer as an honest node would, then mutate
                own = self._answer(msg, node)
                if self.rng.random() >= self.rate:
                    replies.append(own)
                    continue
                if not self.own_replies:
                    pool.append(own)  # one honest-looking reply serves this whole batch
                pool = [own]
            template = pool[int(self.rng.integers(0, len(pool)))]
            replies.append(hostile_reply(template, msg, self.rng))
            self.sent[msg.metadata.message_type] += 1
        if messages and messages[0].metadata.message_type == "train":
            self.train_replies.append(len(replies))
        return replies
