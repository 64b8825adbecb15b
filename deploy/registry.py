"""The model registry's life cycle: list versions, promote through the gates, roll back.

The ``champion`` alias moves only through :func:`move_champion`, which records who, when, why and
which version it replaced as version tags; so ``rollback`` can always go back one step, and the
registry itself is the audit log. Imports MLflow but not Prefect.
"""

from __future__ import annotations

import contextlib
import getpass
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from weakflow.tasks.lib.errors import RegistryError  # noqa: F401 (raised here; defined apart, light)
from weakflow.deploy.gates import GateDecision, GateInput, decide

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_CHARS = 5000  # MLflow stores tag values in String(5000): PostgreSQL and MySQL enforce it


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def alias_version(client: MlflowClient | None, name: str, alias: str, uri: str) -> str:
    """The version behind ``alias``; otherwise :class:`RegistryError` in one line naming the model, the
    alias, the tracking URI and what to run. A SQLite store that does not exist is reported as such, and
    not created (with ``client`` None, the client for ``uri`` is made after that check: making one creates
    the store)."""
    if uri.startswith("sqlite:///"):
        from pathlib import Path

        database = uri.removeprefix("sqlite:///").split("?", 1)[0]
        if database not in ("", ":memory:") and not Path(database).exists():
            raise RegistryError(f"no model {name!r} with the alias {alias!r}: there is no MLflow registry at {uri} "
                                "(no such file); run `weakflow run` first, or point --workspace or --tracking-uri "
                                "at the registry that has the model")
    client = client or MlflowClient(uri)
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        failure = exc
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"cannot read model {name!r} (alias {alias!r}) from {uri}: "
                                f"{str(failure).splitlines()[0] if str(failure) else type(failure).__name__}") from exc
        raise RegistryError(f"no registered model {name!r} in {uri} (looked for its alias {alias!r}); run `weakflow "
                            "run` first, or point --workspace or --tracking-uri at the registry that has it") from exc
    aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted((model.aliases or {}).items())) or "none"
    raise RegistryError(f"model {name!r} in {uri} has no version with the alias {alias!r} (its aliases: {aliases}); "
                        "run `weakflow run`, or `weakflow promote VERSION --reason TEXT` to make one champion, "
                        "or set serve.alias") from failure


def model_version(client: MlflowClient, name: str, version: str):  # -> ModelVersion
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model {name!r} has no version {version!r}") from exc


def move_champion(client: MlflowClient, name: str, version: str, action: str, reason: str,
                  user: str | None = None) -> str | None:
    """Point ``champion`` at ``version``; tag it with the action, user, time, reason and the version it
    replaced (``previous_champion``, what rollback follows). Returns that previous version."""
    previous = champion_version(client, name)
    user = user or getpass.getuser()
    stamp = now()
    client.set_registered_model_alias(name, CHAMPION, str(version))
    tags = {f"{action}_by": user, f"{action}_at": stamp, f"{action}_reason": reason, "champion_since": stamp}
    # a rollback target keeps the predecessor it had when it was first promoted; the step back is recorded apart
    tags["rolled_back_from" if action == "rolled_back" else "previous_champion"] = previous or "none"
    with contextlib.suppress(MlflowException):  # a champion is no longer a challenger
        if str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(version):
            client.delete_registered_model_alias(name, CHALLENGER)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    if previous is not None and previous != str(version):
        client.set_model_version_tag(name, previous, "replaced_at", stamp)
        client.set_model_version_tag(name, previous, "replaced_by_version", str(version))
    history = json.loads(client.get_registered_model(name).tags.get("champion_history", "[]"))
    history.append({"version": str(version), "action": action, "by": user, "at": stamp, "reason": reason})
    history = history[-50:]
    while len(history) > 1 and len(json.dumps(history)) > HISTORY_CHARS:  # the oldest moves go first
        history.pop(0)
    client.set_registered_model_tag(name, "champion_history", json.dumps(history))
    return previous


@dataclass
class Promotion:
    version: str
    previous: str | None
    decision: GateDecision


Scorer = Callable[[str], float]  # version -> accuracy on the frozen gold test split


def refusal(name: str, version: str, decision: GateDecision, force: bool) -> str:
    """Why a promotion was refused, gate by gate, each with how to pass it knowingly (the setting to
    change, or ``--force``), or that it cannot be overridden."""
    parts = []
    for f in decision.failures:
        if not f.forcible:
            how = f"cannot be overridden: fix the version's {f.gate} (its tag {f.gate}=failed)"
        elif force:
            how = "overridden by --force"
        else:
            how = "to promote anyway, knowingly: " + (f"{f.setting}, or " if f.setting else "") + \
                "--force (recorded on the version as gate_override)"
        parts.append(f"{f} [{how}]")
    return f"{name} v{version} not promoted: " + "; ".join(parts)


def promote(client: MlflowClient, name: str, version: str, reason: str, score: Scorer, min_accuracy: float | None,
            max_regression: float, test_digest: str | None = None, user: str | None = None,
            force: bool = False) -> Promotion:
    """Make ``version`` champion if every gate passes; otherwise raise :class:`RegistryError` naming each
    gate that refused and how to override it, and leave the alias where it is.

    Both the candidate and the current champion are scored by ``score`` on the same split; with
    ``test_digest`` the candidate must have been evaluated on exactly that split (its tag). ``force``
    passes the accuracy gates (min_accuracy, champion) that failed, never validation or governance; the
    override is recorded as the version tags ``gate_verdict=overridden`` and ``gate_override`` and in the
    champion history's reason."""
    if not reason.strip():
        raise RegistryError("a promotion needs a reason (--reason TEXT): it is recorded on the version")
    mv = model_version(client, name, version)
    current = champion_version(client, name)
    if current == str(version):
        raise RegistryError(f"{name} v{version} is already the champion")
    tags = mv.tags
    if test_digest is not None and tags.get("test_set_digest") not in (None, test_digest):
        raise RegistryError(f"{name} v{version} was evaluated on test split {tags['test_set_digest']}, not on the "
                            f"configured one ({test_digest}): the gates need the same frozen split")
    accuracy = score(str(version))
    champ_acc, champ_err = None, None
    if current is not None:
        try:
            champ_acc = score(current)
        except Exception as exc:  # an unloadable champion is a gate failure, not a crash
            champ_err = f"{type(exc).__name__}: {exc}"
    decision = decide(GateInput(accuracy, validation_passed=tags.get("validation", "passed") == "passed",
                                champion_version=current, champion_accuracy=champ_acc, champion_error=champ_err,
                                governance_passed=tags.get("governance", "passed") != "failed"),
                      min_accuracy, max_regression)
    client.set_model_version_tag(name, str(version), "last_promotion_check", f"{now()}: {decision.reason}")
    forced = force and not decision.passed and all(f.forcible for f in decision.failures)
    if not decision.passed and not forced:
        raise RegistryError(refusal(name, str(version), decision, force))
    moved = champion_version(client, name)
    if moved != current:  # scoring takes seconds: the gates compared against a champion that is gone
        raise RegistryError(f"the champion of {name!r} moved from v{current} to v{moved} while v{version} was being "
                            "checked; nothing changed, run the promotion again")
    if forced:
        reason = f"{reason} [forced past: {', '.join(f.gate for f in decision.failures)}]"
    previous = move_champion(client, name, str(version), "promoted", reason, user)
    client.set_model_version_tag(name, str(version), "gate_verdict", "overridden" if forced else "passed")
    if forced:
        client.set_model_version_tag(name, str(version), "gate_override",
                                     f"{now()} by {user or getpass.getuser()}: {decision.reason}"[:HISTORY_CHARS])
    client.set_model_version_tag(name, str(version), "test_accuracy", f"{accuracy:.4f}")
    return Promotion(str(version), previous, decision)


def champion_stack(history: list[dict]) -> list[str]:
    """Champions in order, each one replacing the one below it; a rollback pops the top."""
    stack: list[str] = []
    for event in history:
        if event["action"] == "rolled_back":
            if stack:
                stack.pop()
            if not stack or stack[-1] != event["version"]:
                stack.append(event["version"])
        elif not stack or stack[-1] != event["version"]:
            stack.append(event["version"])
    return stack


def rollback(client: MlflowClient, name: str, reason: str = "rollback", user: str | None = None) -> tuple[str, str]:
    """Move ``champion`` back to the champion it replaced (repeatable: each rollback goes one further
    back); returns (from version, to version)."""
    current = champion_version(client, name)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back from")
    stack = champion_stack(json.loads(client.get_registered_model(name).tags.get("champion_history", "[]")))
    if not stack or stack[-1] != current:
        raise RegistryError(f"the champion alias of {name!r} (v{current}) was moved outside weakflow, so its "
                            "history is unknown; use `weakflow promote VERSION --reason ...` instead")
    if len(stack) < 2:
        raise RegistryError(f"{name} v{current} is the first champion: there is no previous one to roll back to")
    target = stack[-2]
    model_version(client, name, target)  # still exists
    move_champion(client, name, target, "rolled_back", reason, user)
    client.set_model_version_tag(name, current, "rolled_back_from_at", now())
    return current, target


def list_versions(client: MlflowClient, name: str) -> pd.DataFrame:
    """One row per version: aliases, test accuracy, gate verdict, who promoted it, created time."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"no registered model named {name!r} in {mlflow.get_tracking_uri()}") from exc
    aliases: dict[str, list[str]] = {}
    for alias, v in (model.aliases or {}).items():
        aliases.setdefault(str(v), []).append(alias)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        t = mv.tags
        rows.append({
            "version": int(mv.version), "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
            "test_accuracy": float(t["test_accuracy"]) if "test_accuracy" in t else np.nan,
            "gold_only": float(t["gold_only_accuracy"]) if "gold_only_accuracy" in t else np.nan,
            "gate": t.get("gate_verdict", ""),
            "promoted": next((f"{t[k + '_by']} {t[k + '_at']}" for k in ("rolled_back", "promoted", "registered")
                              if k + "_by" in t and k + "_at" in t), ""),
            "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "run_id": mv.run_id,
        })
    return pd.DataFrame(rows).sort_values("version", ascending=False).reset_index(drop=True)
