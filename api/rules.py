"""Threat rules at runtime: list, add, change, enable, disable, delete.

A change is checked against the current rule set with the same domain code
the dataflow runs (:class:`agentwatch.rules.RuleSet`), published on
``agents.events`` as a ``rule_changed`` event — the dataflow applies it to
every shard without a restart — and recorded in the ClickHouse table
``rules``, which is the API's view of the rule set: the seed's default rules,
overlaid with every change made since.
"""

from __future__ import annotations

import threading
import time

import orjson
from clickhouse_connect.driver.client import Client
from confluent_kafka import KafkaException, Producer

from agentwatch.rules import RuleChangeError, RuleSet, default_rules
from agentwatch.settings import Settings
from schemas.events import FLEET, rule_change_event
from schemas.models import RuleChange, ThreatRuleSpec


class RuleNotFound(RuleChangeError):
    """No rule of that name."""


class RuleExists(RuleChangeError):
    """A rule of that name exists already."""


class RulePublishError(RuntimeError):
    """The change could not be written to Kafka; nothing was changed."""


class RuleBook:
    """The API's side of the rule set: reads the ``rules`` projection, publishes changes.

    Changes are serialized by a lock, so two concurrent requests cannot both
    add the same rule.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._producer: Producer | None = None

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

    def apply(self, client: Client, change: RuleChange, actor: str) -> ThreatRuleSpec | None:
        """Check, publish and record one change; the rule as it now is (None if deleted).

        Raises :class:`RuleChangeError` if the change does not fit the rule set,
        :class:`RulePublishError` if Kafka did not take it.
        """
        with self._lock:
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
            after = {rule.name: rule for rule in trial.rules()}.get(change.target)
            now = time.time()
            self._publish(rule_change_event(change, actor, now))
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

    def _publish(self, event: dict) -> None:
        if self._producer is None:
            self._producer = Producer(
                {"bootstrap.servers": self.settings.bootstrap_servers, "acks": "all"}
            )
        failures: list[str] = []

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                failures.append(str(error))

        try:
            self._producer.produce(
                self.settings.topic("events"), key=FLEET.encode(), value=orjson.dumps(event),
                on_delivery=delivered,
            )  # fmt: skip
        except (KafkaException, BufferError) as exc:
            raise RulePublishError(f"Kafka refused the rule change: {exc}") from None
        left = self._producer.flush(self.settings.api_broker_timeout_s * 10)
        if left or failures:
            reason = failures[0] if failures else "no answer from the broker"
            raise RulePublishError(f"the rule change was not published ({reason}); retry")

    def close(self) -> None:
        """Deliver what is pending and let go of the producer."""
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None


__all__ = ["RuleBook", "RuleChangeError", "RuleExists", "RuleNotFound", "RulePublishError"]
