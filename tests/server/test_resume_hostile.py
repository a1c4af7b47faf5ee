"""A checkpoint.npz is hostile until checked: every corrupt or crafted one is refused in one
line naming the file (exit 2), through the real `pollen simulate --resume`, never a traceback;
the ServerApp's own resume path refuses the same files."""

import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pollen.cli import app
from server import RunSettings
from server.checkpoint import CHECKPOINT_FILE, ResumeError, check_resumable, load_checkpoint

ARGS = [
    *("--clients", "4", "--rounds", "2", "--partition", "iid", "--strategy", "fedadam"),
    *("--seed", "3", "--engine", "batched", "--device", "cpu"),
]


def _simulate(out, *extra):
    return CliRunner().invoke(app, ["simulate", *ARGS, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The checkpoint of a real 2-round run (FedAdam: model arrays and optimizer moments)."""
    out = tmp_path_factory.mktemp("run")
    result = _simulate(out)
    assert result.exit_code == 0, result.output
    return (out / CHECKPOINT_FILE).read_bytes()


def _entries(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return {k: stored[k] for k in stored.files}


def _npz(entries, *, compressed=False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **entries)
    return buffer.getvalue()


def _with_meta(data: bytes, **changes) -> bytes:
    entries = _entries(data)
    meta = {**json.loads(entries["meta"].tobytes()), **changes}
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return _npz(entries)


def _edit(data: bytes, edit) -> bytes:
    entries = _entries(data)
    edit(entries)
    return _npz(entries)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _size_bomb(data: bytes) -> bytes:
    """A stored entry whose .npy header claims 10^12 floats: must be refused unallocated."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    buffer = io.BytesIO(data)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.writestr("opt/m_t/bomb.npy", header.getvalue() + b"\0" * 16)
    return buffer.getvalue()


def _object_array(entries):
    entries["arrays/0.bias"] = np.array([{"x": 1}, None], dtype=object)


def _drop_bias(entries):
    for key in [k for k in entries if k.endswith("/0.bias")]:  # the array and its moments
        del entries[key]


def _transpose(entries):
    for key in [k for k in entries if k.endswith("/0.weight")]:
        entries[key] = entries[key].T


def _as_int(entries):
    for key in [k for k in entries if k.endswith("/0.bias")]:
        entries[key] = entries[key].astype(np.int32)


def _nan(entries):
    entries["arrays/0.weight"] = entries["arrays/0.weight"].copy()
    entries["arrays/0.weight"][3, 5] = np.nan


def _inf_moment(entries):
    key = next(k for k in entries if k.startswith("opt/v_t/"))
    entries[key] = np.full_like(entries[key], np.inf)


CASES = {  # name: (corrupt the original bytes, what the one line must say)
    "empty (0 bytes)": (lambda d: b"", "is empty (0 bytes)"),
    "truncated to half": (lambda d: d[: len(d) // 2], "not a readable checkpoint"),
    "truncated by one byte": (lambda d: d[:-1], "not a readable checkpoint"),
    "garbage": (lambda d: np.random.default_rng(0).bytes(5000), "not a readable checkpoint"),
    "zip magic then garbage": (lambda d: b"PK\x03\x04" + b"\x07" * 300, "not a readable"),
    "a flipped byte in the weights": (lambda d: _flip(d, 1000), "Bad CRC-32"),
    "a missing model array": (lambda d: _edit(d, _drop_bias), "lacks model array(s) ['0.bias']"),
    "no meta entry": (lambda d: _edit(d, lambda e: e.pop("meta")), "no 'meta' entry"),
    "wrong shapes": (lambda d: _edit(d, _transpose), "[64, 128], the model's is float32[128, 64]"),
    "integer weights": (lambda d: _edit(d, _as_int), "is int32[128], the model's is float32[128]"),
    "an extra array": (
        lambda d: _edit(d, lambda e: e.update({"arrays/extra": np.zeros(3, np.float32)})),
        "the model lacks",
    ),
    "an object (pickled) array": (lambda d: _edit(d, _object_array), "dtype object"),
    "complex values": (
        lambda d: _edit(d, lambda e: e.update({"arrays/0.bias": e["arrays/0.bias"] + 0j})),
        "only numeric arrays",
    ),
    "NaN in the model": (lambda d: _edit(d, _nan), "holds NaN or Inf"),
    "Inf in an optimizer moment": (lambda d: _edit(d, _inf_moment), "holds NaN or Inf"),
    "a moment for no parameter": (
        lambda d: _edit(d, lambda e: e.update({"opt/m_t/nope": np.zeros(2, np.float32)})),
        "does not match a model array",
    ),
    "server_round 1000": (lambda d: _with_meta(d, server_round=1000), "round 1000"),
    "server_round 0": (lambda d: _with_meta(d, server_round=0), "server_round must be"),
    "server_round as text": (lambda d: _with_meta(d, server_round="2"), "server_round must"),
    "server_round true": (lambda d: _with_meta(d, server_round=True), "server_round must"),
    "server_round 2.0": (lambda d: _with_meta(d, server_round=2.0), "server_round must"),
    "settings a list": (lambda d: _with_meta(d, settings=[1]), "meta settings must"),
    "compressed entries": (lambda d: _npz(_entries(d), compressed=True), "is compressed"),
    "a 10^12-float header": (_size_bomb, "header says (1000000000000,)"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_corrupt_checkpoint_is_one_line_naming_the_file(original, tmp_path, case):
    corrupt, says = CASES[case]
    (tmp_path / CHECKPOINT_FILE).write_bytes(corrupt(original))
    result = _simulate(tmp_path, "--resume")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    prefix = f"pollen simulate: error: --resume: {tmp_path / CHECKPOINT_FILE}: "
    assert lines[0].startswith(prefix) and says in lines[0], lines[0]


def test_resuming_past_fewer_planned_rounds_is_refused(original, tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(original)
    result = _simulate(tmp_path, "--resume", "--rounds", "1")  # the checkpoint is at round 2
    assert result.exit_code == 2 and "beyond the 1 rounds this run plans" in result.output


def test_the_uncorrupted_checkpoint_still_resumes(original, tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(original)
    result = _simulate(tmp_path, "--resume", "--rounds", "3")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 1  # round 3 only


def _load_or_refuse(data: bytes, folder, original_checkpoint) -> str:
    """Through the real loader and resumability check: refused naming the file, or (a flip in
    a field nothing reads, e.g. a timestamp) the very same checkpoint."""
    path = folder / CHECKPOINT_FILE
    path.write_bytes(data)
    try:
        loaded = load_checkpoint(folder)
        check_resumable(loaded, original_checkpoint.settings)
    except ResumeError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err), str(err)
        return "refused"
    assert loaded.server_round == original_checkpoint.server_round
    for got, want in ((loaded.arrays, original_checkpoint.arrays),) + tuple(
        (loaded.optimizer[a], original_checkpoint.optimizer[a]) for a in loaded.optimizer
    ):
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[k], want[k]) for k in got)
    return "same"


def test_every_truncation_and_header_byte_flip_is_refused_or_harmless(original, tmp_path):
    folder = tmp_path / "fuzz"
    folder.mkdir()
    (folder / CHECKPOINT_FILE).write_bytes(original)
    reference = load_checkpoint(folder)
    outcomes = {"refused": 0, "same": 0}
    for length in range(0, len(original), 61):
        outcomes[_load_or_refuse(original[:length], folder, reference)] += 1
    # every byte of the zip and .npy headers, the meta JSON and the central directory, and a
    # stride through the weights
    positions = sorted(
        {*range(0, 200), *range(len(original) - 3000, len(original)), *range(0, len(original), 53)}
    )
    for at in positions:
        outcomes[_load_or_refuse(_flip(original, at), folder, reference)] += 1
    print(f"checkpoint fuzz: {outcomes}")
    assert outcomes["refused"] > 0.9 * (outcomes["refused"] + outcomes["same"])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_corruptions_through_the_cli_never_crash(original, tmp_path_factory, data):
    at = data.draw(st.integers(0, len(original) - 1))
    cut = data.draw(st.integers(at + 1, len(original)))
    corrupt = _flip(original, at)[:cut]
    folder = tmp_path_factory.mktemp("cli-fuzz")
    (folder / CHECKPOINT_FILE).write_bytes(corrupt)
    result = _simulate(folder, "--resume")
    assert result.exit_code in (0, 2) and not isinstance(result.exception, Exception)
    if result.exit_code == 2:
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_the_server_app_refuses_a_corrupt_checkpoint(original, tmp_path):
    """The deployed ServerApp's resume path (run_federation) reads the same file first."""
    from server.federation import run_federation
    from tests.strategies.fake_grid import QueryAnsweringGrid

    meta = _entries(original)["meta"].tobytes()
    saved = json.loads(meta)["settings"]
    from simulations.settings import SimulationRunSettings  # the checkpoint of a simulation

    run = SimulationRunSettings(**{**saved, "resume": True, "out_dir": str(tmp_path)})
    (tmp_path / CHECKPOINT_FILE).write_bytes(_edit(original, _nan))
    with pytest.raises(ResumeError, match="holds NaN or Inf") as err:
        run_federation(QueryAnsweringGrid({}), run, out_dir=tmp_path)
    assert str(err.value).startswith(f"{tmp_path / CHECKPOINT_FILE}: ")


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default():
    """A checkpoint written before a setting was added (here: every dp-* setting, added after
    the first release of checkpoints) still resumes when the setting is at its default, and is
    refused, naming the setting, when the run now asks for another value."""
    from dataclasses import asdict, replace

    from client_sdk import model_arrays
    from client_sdk.tasks import get_task
    from server.checkpoint import Checkpoint
    from server.schema import defaults_of

    now = RunSettings()
    older = {k: v for k, v in asdict(now).items() if not k.startswith("dp_")}
    arrays = model_arrays(get_task(now.task).build_model(seed=0))
    old = Checkpoint(1, arrays, {}, older)
    check_resumable(old, asdict(now), defaults=defaults_of(RunSettings))
    with pytest.raises(ResumeError, match="dp_mode"):
        check_resumable(old, asdict(now))  # without the defaults: None != 'none'
    changed = replace(now, dp_mode="central", dp_noise_multiplier=1.0)
    with pytest.raises(ResumeError, match="dp_mode"):
        check_resumable(old, asdict(changed), defaults=defaults_of(RunSettings))
