"""``promote``'s refusals against a real registry (MLflow on a temporary SQLite store) holding real
registered versions of a tiny real model, each re-scored through its pyfunc on one frozen split.

The versions differ only where a test needs it: accuracy 1.0 or 0.5 on the split (hand-set weights),
or a tag (test split digest, ``validation``, ``governance``). In each test the refusal is decided by the
one gate under test: a twin version without the difference is promoted by the same call."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from weakflow.deploy import registry
from weakflow.deploy.registry import RegistryError
from tests.tiny_model import accuracy_scorer, frozen_split, register_tiny, use_registry

SPLIT = "digest-of-the-frozen-split"
NAME = "tiny"


@pytest.fixture()
def client(tmp_path):
    use_registry(tmp_path)
    client = MlflowClient()
    # v1: the champion, perfect on the split. Its recorded test_accuracy tag is stale on purpose: the gate
    # must use the champion re-scored on the candidate's split, not what was recorded at its registration.
    v1 = register_tiny(NAME, tags={"test_set_digest": SPLIT, "test_accuracy": "0.3000"})
    registry.move_champion(client, NAME, v1, "registered", "first model", user="test")
    return client


def state(client: MlflowClient) -> tuple:
    """What a refused promotion must leave as it was: the alias, the history, the versions' aliases."""
    model = client.get_registered_model(NAME)
    return registry.champion_version(client, NAME), model.tags.get("champion_history"), dict(model.aliases)


def promote(client, version, test_digest=SPLIT, max_regression=0.0, score=None, min_accuracy=0.4, force=False):
    return registry.promote(client, NAME, version, "test", score or accuracy_scorer(NAME, frozen_split()),
                            min_accuracy=min_accuracy, max_regression=max_regression, test_digest=test_digest,
                            user="test", force=force)


def test_a_version_evaluated_on_another_split_is_refused(client):
    other = register_tiny(NAME, tags={"test_set_digest": "digest-of-another-split"})
    twin = register_tiny(NAME, tags={"test_set_digest": SPLIT})
    before = state(client)
    scored: list[str] = []

    def score(version: str) -> float:
        scored.append(version)
        return accuracy_scorer(NAME, frozen_split())(version)

    with pytest.raises(RegistryError) as refused:
        promote(client, other, score=score)
    assert str(refused.value) == (f"{NAME} v{other} was evaluated on test split digest-of-another-split, not on the "
                                  f"configured one ({SPLIT}): the gates need the same frozen split")
    assert state(client) == before and scored == []  # refused before anything was scored
    assert "last_promotion_check" not in client.get_model_version(NAME, other).tags
    assert promote(client, twin).previous == "1"  # the same model on the configured split goes through
    assert registry.champion_version(client, NAME) == twin


@pytest.mark.parametrize("tag, gate", [("validation", "validation: the data validation suite did not pass"),
                                       ("governance", "governance: the governance checks (contamination, "
                                                      "leakage) did not pass")])
def test_a_version_tagged_failed_is_refused(client, tag, gate):
    failed = register_tiny(NAME, tags={"test_set_digest": SPLIT, tag: "failed"})
    twin = register_tiny(NAME, tags={"test_set_digest": SPLIT, tag: "passed"})
    before = state(client)
    with pytest.raises(RegistryError) as refused:
        promote(client, failed)
    # the only failing gate, which --force does not pass: its data or findings must be fixed
    assert str(refused.value) == (f"{NAME} v{failed} not promoted: {gate} [cannot be overridden: fix the version's "
                                  f"{tag} (its tag {tag}=failed)]")
    assert state(client) == before
    assert client.get_model_version(NAME, failed).tags["last_promotion_check"].endswith(gate)
    with pytest.raises(RegistryError, match="cannot be overridden"):
        promote(client, failed, force=True)
    assert state(client) == before
    assert promote(client, twin).decision.reason == "all gates passed"


def test_the_re_scored_champion_decides(client):
    """Candidate 0.5 against the champion re-scored at 1.0 (its stale tag says 0.3): refused with no drop
    allowed, promoted when a drop of 0.5 is. Above min_accuracy 0.4 either way, so this gate alone decides."""
    worse = register_tiny(NAME, correct_classes=5, tags={"test_set_digest": SPLIT})
    before = state(client)
    with pytest.raises(RegistryError) as refused:
        promote(client, worse, max_regression=0.0)
    assert str(refused.value) == (f"{NAME} v{worse} not promoted: champion: test accuracy 0.5000 is worse than "
                                  "champion v1's 1.0000 on the same test split (allowed drop 0.0000) [to promote "
                                  "anyway, knowingly: --set gates.max_regression=0.5000 (the drop this version "
                                  "makes), or --force (recorded on the version as gate_override)]")
    assert state(client) == before
    done = promote(client, worse, max_regression=0.5)
    assert (done.version, done.previous, done.decision.passed) == (worse, "1", True)
    tags = client.get_model_version(NAME, worse).tags
    assert tags["test_accuracy"] == "0.5000" and tags["previous_champion"] == "1"


def test_a_champion_that_moved_during_scoring_refuses_the_promotion(client):
    """While the candidate is being scored, another promotion moves the champion (through the real
    registry, as a second `weakflow promote` would): the gates compared against a champion that is gone,
    so nothing changes and the message says to run it again."""
    candidate = register_tiny(NAME, tags={"test_set_digest": SPLIT})
    meanwhile = register_tiny(NAME, tags={"test_set_digest": SPLIT})
    real = accuracy_scorer(NAME, frozen_split())

    def score(version: str) -> float:
        if version == candidate:
            registry.move_champion(client, NAME, meanwhile, "promoted", "another reviewer", user="other")
        return real(version)

    with pytest.raises(RegistryError) as refused:
        promote(client, candidate, score=score)
    assert str(refused.value) == (f"the champion of {NAME!r} moved from v1 to v{meanwhile} while v{candidate} was "
                                  "being checked; nothing changed, run the promotion again")
    assert registry.champion_version(client, NAME) == meanwhile
    history = json.loads(client.get_registered_model(NAME).tags["champion_history"])
    assert [h["version"] for h in history] == ["1", meanwhile]  # the candidate never became champion
    assert not {"promoted_by", "gate_verdict"} & set(client.get_model_version(NAME, candidate).tags)
    assert promote(client, candidate).previous == meanwhile  # run again: checked against the new champion


def test_by_default_a_first_model_ships_whatever_its_accuracy_and_a_floor_is_opt_in(tmp_path):
    """A user's first model on hard data (0.5 here) becomes champion under the default gates (only relative
    ones: there is no champion to be worse than). A floor the user sets refuses, naming the gate, the
    setting and --force; --force then promotes and records the override on the version."""
    from weakflow.tasks.lib.config import GateConfig

    use_registry(tmp_path)
    client = MlflowClient()
    first = register_tiny(NAME, correct_classes=5, tags={"test_set_digest": SPLIT})
    defaults = GateConfig()
    done = promote(client, first, min_accuracy=defaults.min_accuracy, max_regression=defaults.max_regression)
    assert (done.version, done.decision.passed, registry.champion_version(client, NAME)) == (first, True, first)
    assert "min_accuracy" not in done.decision.checked

    second = register_tiny(NAME, correct_classes=5, tags={"test_set_digest": SPLIT})
    before = state(client)
    with pytest.raises(RegistryError) as refused:
        promote(client, second, min_accuracy=0.9)
    assert str(refused.value) == (f"{NAME} v{second} not promoted: min_accuracy: test accuracy 0.5000 is below the "
                                  "minimum 0.9000 [to promote anyway, knowingly: --set gates.min_accuracy=null (no "
                                  "floor) or a lower floor, or --force (recorded on the version as gate_override)]")
    assert state(client) == before
    forced = promote(client, second, min_accuracy=0.9, force=True)
    assert (forced.previous, registry.champion_version(client, NAME)) == (first, second)
    tags = client.get_model_version(NAME, second).tags
    assert tags["gate_verdict"] == "overridden" and tags["gate_override"].endswith(
        "by test: min_accuracy: test accuracy 0.5000 is below the minimum 0.9000")
    history = json.loads(client.get_registered_model(NAME).tags["champion_history"])
    assert history[-1]["reason"] == "test [forced past: min_accuracy]"
