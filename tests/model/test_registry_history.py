"""The champion history tag stays within MLflow's tag-value limit, so rollback keeps working."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from weakflow.deploy import registry


def test_history_is_bounded_in_characters_and_rollback_still_follows_it(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = "history-model"
    client.create_registered_model(name)
    for _ in range(3):
        (tmp_path / "model").mkdir(exist_ok=True)
        client.create_model_version(name, source=str(tmp_path / "model"))
    reason = "pipeline run 0123456789abcdef: all gates passed " + "x" * 120  # ~170 characters, like a registration
    for i in range(40):  # 40 moves alternating v1, v2, v3: unbounded, the JSON would pass 5,000 characters
        registry.move_champion(client, name, str(i % 3 + 1), "promoted", reason, user="test")
    stored = client.get_registered_model(name).tags["champion_history"]
    history = json.loads(stored)
    assert len(stored) <= registry.HISTORY_CHARS and 1 < len(history) < 40
    assert history[-1]["version"] == "1"  # the newest move is kept (40th move: 39 % 3 + 1)
    assert registry.rollback(client, name, "test") == ("1", "3")
