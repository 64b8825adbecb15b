import pytest

from weakflow.deploy.gates import GateFailure, GateInput, decide, enforce, gate_min_accuracy, gate_not_worse_than_champion


def test_first_model_passes_on_minimum_alone():
    d = decide(GateInput(accuracy=0.95, validation_passed=True), min_accuracy=0.9)
    assert d.passed and d.reason == "all gates passed"
    assert d.checked == ["validation", "governance", "min_accuracy", "champion", "gold_only"]


def test_below_minimum_fails_with_numbers():
    with pytest.raises(GateFailure, match=r"0\.8500 is below the minimum 0\.9000"):
        gate_min_accuracy(GateInput(0.85, True), 0.9)


def test_worse_than_champion_fails_and_tolerance_allows_small_drop():
    worse = GateInput(0.95, True, champion_version="3", champion_accuracy=0.96)
    with pytest.raises(GateFailure, match="worse than champion v3"):
        gate_not_worse_than_champion(worse, 0.0)
    gate_not_worse_than_champion(worse, 0.02)  # within the allowed drop
    gate_not_worse_than_champion(GateInput(0.96, True, "3", 0.96), 0.0)  # a tie keeps going


def test_unscorable_champion_blocks_promotion():
    d = decide(GateInput(0.99, True, champion_version="2", champion_error="missing columns"), 0.9)
    assert not d.passed
    assert "could not be scored" in d.reason and "missing columns" in d.reason


def test_all_failures_reported_and_enforce_raises_first():
    d = decide(GateInput(0.5, validation_passed=False, champion_version="1", champion_accuracy=0.9), 0.9)
    assert [f.gate for f in d.failures] == ["validation", "min_accuracy", "champion"]
    with pytest.raises(GateFailure) as exc:
        enforce(d)
    assert exc.value.gate == "validation"


def test_worse_than_gold_only_beyond_noise_is_refused():
    worse = decide(GateInput(0.90, True, vs_gold_only=(-0.05, -0.08, -0.02)), 0.5)
    assert [f.gate for f in worse.failures] == ["gold_only"]
    assert "below the gold-only model of the same run by 0.0500" in worse.reason
    # an interval that reaches 0 may be resampling noise; a gain passes; not measured: nothing to decide
    for delta in ((-0.03, -0.07, 0.01), (0.04, 0.01, 0.07), None):
        assert decide(GateInput(0.90, True, vs_gold_only=delta), 0.5).passed


def test_failed_governance_blocks_promotion():
    d = decide(GateInput(0.99, True, governance_passed=False), 0.9)
    assert [f.gate for f in d.failures] == ["governance"] and "contamination" in d.reason


def test_champion_stack_follows_promotions_and_rollbacks():
    from weakflow.deploy.registry import champion_stack

    events = [("1", "registered"), ("2", "promoted"), ("4", "registered")]
    history = [{"version": v, "action": a} for v, a in events]
    assert champion_stack(history) == ["1", "2", "4"]
    history.append({"version": "2", "action": "rolled_back"})
    assert champion_stack(history) == ["1", "2"]
    history.append({"version": "1", "action": "rolled_back"})
    assert champion_stack(history) == ["1"]
    history.append({"version": "5", "action": "promoted"})
    assert champion_stack(history) == ["1", "5"]


def test_the_default_gates_are_relative_and_a_floor_is_opt_in():
    """Under the default config a model that beats gold-only and the champion ships at any accuracy
    (0.62 on hard data); a floor the user sets still refuses, saying how to pass it knowingly."""
    from weakflow.tasks.lib.config import GateConfig

    cfg = GateConfig()
    better = GateInput(0.62, True, champion_version="1", champion_accuracy=0.60, vs_gold_only=(0.04, 0.01, 0.07))
    default = decide(better, cfg.min_accuracy, cfg.max_regression)
    assert default.passed and default.checked == ["validation", "governance", "champion", "gold_only"]
    floored = decide(better, 0.9, cfg.max_regression)
    assert [f.gate for f in floored.failures] == ["min_accuracy"]
    assert floored.failures[0].forcible and "gates.min_accuracy=null" in floored.failures[0].setting
    # relative gates still refuse under the defaults
    worse = GateInput(0.62, True, champion_version="1", champion_accuracy=0.70, vs_gold_only=(-0.05, -0.08, -0.02))
    assert [f.gate for f in decide(worse, cfg.min_accuracy, cfg.max_regression).failures] == ["champion", "gold_only"]


def test_a_registry_that_cannot_be_read_fails_the_register_stage_instead_of_meaning_no_champion():
    """``load_champion`` turns an unreadable registry into a champion with no version and an error; the
    register stage must not read that as "no champion yet" (the gate would pass without a comparison)."""
    from types import SimpleNamespace

    from weakflow.tasks import register
    from weakflow.tasks.lib.errors import RegistryError
    from weakflow.tasks.lib.review import Champion
    from weakflow.tasks.lib.steps import RunContext

    unreadable = Champion(None, error="registry not readable: OperationalError: unable to open database file")
    with pytest.raises(RegistryError, match="could not be looked up .*registry not readable.*nothing was registered"):
        register.compute(RunContext(0, "cpu", "."), None, SimpleNamespace(model=None), None, None, unreadable,
                         None, "fail", None)
