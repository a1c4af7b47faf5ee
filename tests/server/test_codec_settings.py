"""The rotation/EDEN/sign codec settings: impossible ones refused with the key that is wrong,
at the codec, in the run settings and in a client reading the server's round config."""

import pytest
from flwr.app import ConfigRecord

from client_sdk.rounds import codec_from_config
from client_sdk.task import TaskConfigError
from server import RunConfigError, RunSettings
from strategies.compression import CompressionSettings
from wire import CodecConfigError, CodecSpec
from wire.rotation import shared_rotation_seed


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"scheme": "drive", "quant_bits": 1}, "quant-scheme must be one of"),
        ({"scheme": "eden", "quant_bits": 8}, "quant-scheme eden needs quant-bits"),
        ({"scheme": "eden", "quant_bits": 0}, "quant-scheme eden needs quant-bits"),
        ({"scheme": "sign", "quant_bits": 2}, "quant-scheme sign needs quant-bits 1"),
        ({"scheme": "eden", "quant_bits": 1, "eden_scale": "l2"}, "eden-scale must be"),
        ({"quant_bits": 4, "eden_scale": "mse"}, "eden-scale applies to quant-scheme eden"),
        ({"rotate": "yes"}, "rotate must be one of"),
        ({"rotate": "client", "rotate_block": 1000}, "rotate-block must be a power of two"),
        ({"rotate": "client", "rotate_block": 1}, "rotate-block must be a power of two"),
        ({"rotate": "client", "rotate_block": 1 << 19}, "rotate-block must be a power of two"),
        ({"rotate": "client", "rotate_block": 1024.0}, "rotate-block must be a power of two"),
        ({"rotate": "shared", "rotate_seed": -1}, "rotate-seed must be in"),
        ({"rotate": "shared", "rotate_seed": 1 << 63}, "rotate-seed must be in"),
    ],
)
def test_impossible_codecs_are_refused_naming_the_setting(kwargs, match):
    with pytest.raises(CodecConfigError, match=match):
        CodecSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"quant_scheme": "eden", "quant_bits": 8}, "quant-scheme"),
        ({"quant_scheme": "eden", "quant_bits": 1, "eden_scale": "x"}, "eden-scale"),
        ({"rotate": "maybe"}, "rotate"),
        ({"rotate": "client", "rotate_block": 100}, "rotate-block"),
        ({"rotate": "client", "rotate_block": True}, "rotate-block"),
        ({"secure_agg": True, "rotate": "client", "min_available_nodes": 4}, "rotate"),
    ],
)
def test_run_settings_name_the_wrong_key(kwargs, key):
    with pytest.raises(RunConfigError) as err:
        RunSettings(**kwargs)
    assert err.value.key == key


def test_the_round_config_carries_the_codec_and_a_shared_rotation_seed_per_round():
    settings = RunSettings(quant_scheme="eden", quant_bits=2, rotate="shared", rotate_block=256)
    comp = settings.compression()
    config = comp.codec_config(server_round=4, run_seed=9)
    assert config["rotate-seed"] == shared_rotation_seed(9, 4)
    codec = codec_from_config(ConfigRecord(config))
    assert codec == CodecSpec(
        quant_bits=2,
        scheme="eden",
        rotate="shared",
        rotate_block=256,
        rotate_seed=shared_rotation_seed(9, 4),
    )
    assert "rotate-seed" not in CompressionSettings().codec_config(server_round=4, run_seed=9)


@pytest.mark.parametrize("value", [1024.0, "1024", True])
def test_a_client_refuses_a_round_config_whose_block_or_seed_is_not_an_int(value):
    for key in ("rotate-block", "rotate-seed"):
        with pytest.raises(TaskConfigError, match=key):
            codec_from_config(ConfigRecord({"rotate": "client", key: value}))
    with pytest.raises(TaskConfigError, match="quant-scheme"):
        codec_from_config(ConfigRecord({"quant-scheme": "eden", "quant-bits": 8}))
