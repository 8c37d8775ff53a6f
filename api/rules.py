"""Threat rules at runtime: list, add, change, enable, disable, delete, restore.

A change is checked against the current rule set with the same domain code
the dataflow runs (:class:`agentwatch.rules.RuleSet`), published on
``agents.control`` as a ``rule_changed`` command — the dataflow applies it to
every shard without a restart — and recorded in the ClickHouse table
``rules``, which is the API's view of the rule set: the seed's default rules,
overlaid with every change made since.

Two guards against losing the rules by mistake: a change that would leave one of
the default rules' categories (SECURITY, PERFORMANCE) without any enabled rule is
made only when confirmed (:class:`RuleNeedsConfirmation`), and the default rules
can always be put back as shipped (:meth:`RuleBook.restore`), each restored rule
a change like any other: published, recorded with its actor.
"""

from __future__ import annotations

import threading
import time

from clickhouse_connect.driver.client import Client

from agentwatch.rules import (
    RuleChangeError,
    RuleSet,
    categories_left_unwatched,
    default_rules,
    restoring_changes,
)
from agentwatch.settings import Settings
from api.publisher import EventPublisher
from schemas.events import FLEET, rule_change_event
from schemas.models import RuleChange, ThreatRuleSpec


class RuleNotFound(RuleChangeError):
    """No rule of that name."""


class RuleExists(RuleChangeError):
    """A rule of that name exists already."""


class RuleNeedsConfirmation(RuleChangeError):
    """The change would leave a category of the default rules with no enabled rule."""


class RuleBook:
    """The API's side of the rule set: reads the ``rules`` projection, publishes changes.

    Changes are serialized by a lock, so two concurrent requests cannot both
    add the same rule.
    """

    def __init__(self, settings: Settings, publisher: EventPublisher):
        self.settings = settings
        self.publisher = publisher
        self._lock = threading.Lock()

    def rules(self, client: Client) -> list[ThreatRuleSpec]:
        """The rule set as it stands: defaults overlaid with the recorded changes."""
        specs = {rule.name: rule for rule in default_rules(self.settings)}
        rows = client.query(
            f"SELECT name, argMax(spec, version), argMax(deleted, version) "
            f"FROM {self.settings.clickhouse_database}.rules GROUP BY name"
        ).result_rows
        for name, spec, deleted in rows:
            if deleted:
                specs.pop(name, None)
            else:
                specs[name] = ThreatRuleSpec.model_validate_json(spec)
        return sorted(specs.values(), key=lambda rule: rule.name)

    def apply(
        self, client: Client, change: RuleChange, actor: str, confirm: bool = False
    ) -> ThreatRuleSpec | None:
        """Check, publish and record one change; the rule as it now is (None if deleted).

        Raises :class:`RuleChangeError` if the change does not fit the rule set,
        :class:`RuleNeedsConfirmation` if it would leave a default category without an
        enabled rule and ``confirm`` is false, :class:`api.publisher.PublishError` if
        Kafka did not take it.
        """
        with self._lock:
            return self._apply(client, change, actor, confirm)

    def restore(self, client: Client, actor: str, names: list[str] | None = None) -> list[str]:
        """Put the default rules (all, or those named) back as shipped, enabled; the names
        of the rules that changed (none when they already were as shipped).

        Each is published and recorded like any change, so the restore is audited.
        Raises :class:`RuleChangeError` for a name that is not a default rule.
        """
        with self._lock:
            changes = restoring_changes(self.rules(client), default_rules(self.settings), names)
            for change in changes:
                self._apply(client, change, actor, confirm=True)
            return [change.target for change in changes]

    def _apply(
        self, client: Client, change: RuleChange, actor: str, confirm: bool
    ) -> ThreatRuleSpec | None:
        current = {rule.name: rule for rule in self.rules(client)}
        if change.action == "add" and change.target in current:
            raise RuleExists(
                f"rule {change.target!r} exists; PUT /api/v1/rules/{change.target} changes it"
            )
        if change.action != "add" and change.target not in current:
            raise RuleNotFound(
                f"no rule {change.target!r}; the rules are: {', '.join(sorted(current))}"
            )
        trial = RuleSet(current.values())
        trial.apply(change)  # raises RuleChangeError, leaving everything as it was
        unwatched = categories_left_unwatched(
            current.values(), trial.rules(), default_rules(self.settings)
        )
        if unwatched and not confirm:
            raise RuleNeedsConfirmation(
                f"{change.action} {change.target!r} would leave no enabled "
                f"{' or '.join(unwatched)} rule, so no such threat would be raised; "
                "send it again with ?confirm=true if that is what you want "
                "(POST /api/v1/rules/restore puts the default rules back)"
            )
        after = {rule.name: rule for rule in trial.rules()}.get(change.target)
        now = time.time()
        self.publisher.publish(rule_change_event(change, actor, now), FLEET)
        client.insert(
            "rules",
            [
                (
                    change.target,
                    (after or current[change.target]).model_dump_json(),
                    after is None,
                    now,
                    actor,
                )
            ],
            column_names=("name", "spec", "deleted", "version", "updated_by"),
            database=self.settings.clickhouse_database,
        )
        return after


__all__ = ["RuleBook", "RuleChangeError", "RuleExists", "RuleNeedsConfirmation", "RuleNotFound"]
