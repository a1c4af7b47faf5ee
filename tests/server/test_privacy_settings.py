"""dp-* settings: refusals name their key; central DP is planned as the run's sampler draws."""

import pytest

from server import RunConfigError, RunSettings
from strategies.privacy.accounting import epsilon


@pytest.mark.parametrize(
    ("kwargs", "key", "why"),
    [
        ({"strategy": "krum", "dp_noise_multiplier": 1.0}, "dp-mode", "reads each update"),
        ({"secure_agg": True, "dp_noise_multiplier": 1.0}, "dp-mode", "secure-agg"),
        ({}, "dp-noise-multiplier", "exactly one"),
        ({"dp_noise_multiplier": 1.0, "dp_target_epsilon": 3.0}, "dp-noise-multiplier", "one"),
        ({"dp_noise_multiplier": -1.0}, "dp-noise-multiplier", ">= 0"),
        ({"dp_clip": 0.0}, "dp-clip", "must be in"),
        ({"dp_clip": 1e300, "dp_noise_multiplier": 1.0}, "dp-clip", "must be in"),
    ],
)
def test_refusals_name_the_setting(kwargs, key, why):
    with pytest.raises(RunConfigError, match=why) as err:
        RunSettings(dp_mode="central", **kwargs)
    assert err.value.key == key


@pytest.mark.parametrize("key", ["dp_target_epsilon", "dp_noise_multiplier"])
def test_a_dp_budget_without_a_dp_mode_is_refused_not_run_without_dp(key):
    with pytest.raises(RunConfigError, match="dp-mode is none: the run would have no DP") as err:
        RunSettings(**{key: 8.0})
    assert err.value.key == key.replace("_", "-")


def test_central_dp_is_calibrated_for_the_planned_rounds():
    run = RunSettings(
        dp_mode="central", dp_target_epsilon=3.0, num_server_rounds=20, fraction_train=0.1
    )
    dp = run.central_privacy(500)
    assert (dp.plan.population, dp.plan.per_round, dp.plan.rounds) == (500, 50, 20)
    assert dp.plan.delta == pytest.approx(500**-1.1)  # the default delta
    assert epsilon(dp.noise_multiplier, dp.plan) <= 3.0
    assert dp._rng is not None and dp.client_metrics is False
    assert RunSettings().central_privacy(500) is None


def test_an_unreachable_target_is_refused_at_start():
    run = RunSettings(
        dp_mode="central", dp_target_epsilon=1e-3, dp_target_delta=1e-9, num_server_rounds=1000
    )
    with pytest.raises(RunConfigError, match="cannot be met") as err:
        run.central_privacy(10)
    assert err.value.key == "dp-target-epsilon"


def test_local_dp_is_accounted_per_client_over_every_round():
    run = RunSettings(dp_mode="local", strategy="krum", dp_noise_multiplier=4.0, dp_clip=0.5)
    dp = run.local_privacy()
    assert run.central_privacy(100) is None
    assert (dp.plan.population, dp.plan.per_round, dp.plan.rounds) == (1, 1, 3)
    assert dp.round_config() == {
        "dp-local-clip": 0.5,
        "dp-local-stddev": 2.0,
        "dp-local-seeded": False,
    }
    assert dp.aggregator({}) is None  # the strategy's own aggregation (krum is allowed)
    history = [dp.finish_round()["dp-epsilon"] for _ in range(3)]
    assert history[-1] == pytest.approx(epsilon(4.0, dp.plan))


def test_clear_client_metrics_under_dp_need_an_opt_in():
    dp = {"dp_mode": "local", "dp_noise_multiplier": 1.0, "secure_agg": True}
    with pytest.raises(RunConfigError, match="dp-client-metrics") as err:
        RunSettings(**dp, secagg_share_metrics=True)
    assert err.value.key == "secagg-share-metrics"
    assert RunSettings(**dp, secagg_share_metrics=True, dp_client_metrics=True).local_privacy()
    for mode in ("central", "local"):  # federated evaluation's metrics are per client too
        with pytest.raises(RunConfigError, match="dp-client-metrics") as err:
            RunSettings(dp_mode=mode, dp_noise_multiplier=1.0, fraction_evaluate=0.5)
        assert err.value.key == "fraction-evaluate"
    RunSettings(
        dp_mode="central", dp_noise_multiplier=1.0, fraction_evaluate=0.5, dp_client_metrics=True
    )


def test_poisson_sampling_is_accounted_as_dp_accountings_poisson_sampled_gaussian():
    """dp-sampling poisson: the plan's rate is the sampler's (m / N) and the epsilon is
    dp-accounting's PoissonSampledDpEvent(q, Gaussian(z)) composed over the rounds."""
    import dp_accounting as dpa
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    from strategies.privacy.accounting import ORDERS, RoundPlan
    from strategies.sampling import poisson_rate

    run = RunSettings(
        dp_mode="central",
        dp_sampling="poisson",
        dp_noise_multiplier=1.1,
        dp_target_delta=1e-5,
        num_server_rounds=60,
        fraction_train=0.05,
    )
    dp = run.central_privacy(1000)
    assert dp.plan.sampling == "poisson" and dp.plan.rate == poisson_rate(1000, 0.05, 1) == 0.05
    for z, rounds in ((1.1, 60), (0.8, 10), (4.0, 1000)):
        accountant = rdp.RdpAccountant(list(ORDERS), dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
        accountant.compose(dpa.PoissonSampledDpEvent(0.05, dpa.GaussianDpEvent(z)), rounds)
        plan = RoundPlan(
            population=1000, per_round=50, rounds=rounds, delta=1e-5, sampling="poisson"
        )
        assert epsilon(z, plan) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    # N=1000, m=50, 100 rounds, delta 1e-5: z = 1.157 meets epsilon 3 under Poisson sampling
    # (calibrate_noise finds it); fixed-size sampling needs z = 3.49 for the same epsilon
    plan = RoundPlan(population=1000, per_round=50, rounds=100, delta=1e-5, sampling="poisson")
    assert epsilon(1.157, plan) == pytest.approx(3.0, abs=0.01)
    fixed = RoundPlan(population=1000, per_round=50, rounds=100, delta=1e-5)
    assert epsilon(1.157, fixed) > 6 * 3.0 and epsilon(3.49, fixed) == pytest.approx(3.0, abs=0.01)


DDP = {"dp_mode": "distributed", "secure_agg": True, "dp_target_epsilon": 8.0}


@pytest.mark.parametrize(
    ("changes", "key", "why"),
    [
        ({"secure_agg": False}, "secure-agg", "under secure aggregation"),
        ({"strategy": "krum"}, "strategy", "needs each client"),
        ({"rotate": "shared"}, "rotate", "rotates by itself"),
        ({"topk": 0.1}, "topk", "secure-agg"),
        ({"error_feedback": True}, "error-feedback", "secure-agg"),
        ({"dp_adaptive_clip": True}, "dp-adaptive-clip", "fixed dp-clip"),
        ({"dp_bits": 7}, "dp-bits", r"\[8, 32\]"),
        ({"dp_bits": 33}, "dp-bits", r"\[8, 32\]"),
        ({"dp_sampling": "poisson"}, "dp-sampling", "central"),
    ],
)
def test_distributed_dp_refusals_name_the_setting(changes, key, why):
    with pytest.raises(RunConfigError, match=why) as err:
        RunSettings(**{**DDP, **changes})
    assert err.value.key == key


def test_distributed_dp_is_calibrated_and_refuses_what_it_cannot_plan_at_start():
    from strategies.privacy.distributed import planned_epsilon, rotated_dim

    run = RunSettings(**DDP, num_server_rounds=2, fraction_train=0.5)
    dp = run.distributed_privacy(20, 1000)
    assert (dp.plan.population, dp.plan.per_round, dp.plan.rounds) == (20, 10, 2)
    assert (dp.bits, dp.clip, dp.seeded, rotated_dim(1000)) == (16, 1.0, False, 1024)
    eps = planned_epsilon(dp.noise_multiplier, dp.plan, clip=1.0, bits=16, values=1000)
    assert 7.9 < eps <= 8.0
    assert dp.round_config() == {"dp-local-seeded": False}
    assert RunSettings().distributed_privacy(20, 1000) is None
    too_few = RunSettings(**{**DDP, "dp_bits": 8})
    with pytest.raises(RunConfigError, match="count does not fit") as err:
        too_few.distributed_privacy(400, 10)  # 400 uploads' count wraps 8 bits
    assert err.value.key == "dp-bits"
    with pytest.raises(RunConfigError, match="cannot be met.*dp-bits 8") as err:
        too_few.distributed_privacy(200, 10**5)  # the sum fits only with far too little noise
    assert err.value.key == "dp-target-epsilon"
    hard = RunSettings(**{**DDP, "dp_target_epsilon": 1e-3, "num_server_rounds": 1000})
    with pytest.raises(RunConfigError, match="cannot be met") as err:
        hard.distributed_privacy(10, 1000)
    assert err.value.key == "dp-target-epsilon"


def test_poisson_sampling_is_for_central_dp_only():
    with pytest.raises(RunConfigError, match="dp-mode central only") as err:
        RunSettings(dp_mode="local", dp_sampling="poisson", dp_noise_multiplier=1.0)
    assert err.value.key == "dp-sampling"
    with pytest.raises(RunConfigError) as err:
        RunSettings(dp_sampling="uniform")
    assert err.value.key == "dp-sampling"
