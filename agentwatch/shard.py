"""Everything the dataflow keeps for one shard of agents, and one batch's way through it.

A shard's state is its agents' baselines and detector (:class:`FleetBaselines`)
and the threat rules' state (:class:`RuleSet`). Rules judge each heartbeat
against the baseline as it stood before the batch; then the detector scores
and learns it.

>>> from agentwatch.settings import Settings
>>> shard = ShardState.new(Settings())
>>> len(shard.rules.rules()), len(shard.baselines)
(5, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentwatch.fleet import DetectorConfig, FleetBaselines
from agentwatch.rules import BaselineInputs, RuleSet
from agentwatch.settings import Settings
from schemas.heartbeats import HeartbeatBatch


@dataclass(slots=True)
class ShardOutput:
    """What one batch produced, as plain dicts in the layouts of :mod:`schemas.models`:
    ``AnomalyRecord``, ``BaselineRecord`` and ``Threat``."""

    anomalies: list[dict] = field(default_factory=list)
    baselines: list[dict] = field(default_factory=list)
    threats: list[dict] = field(default_factory=list)


@dataclass(slots=True)
class ShardState:
    """Baselines, detector and threat-rule state of one shard of agents."""

    baselines: FleetBaselines
    rules: RuleSet

    @classmethod
    def new(cls, settings: Settings) -> ShardState:
        """An empty shard with the default rule set of ``settings``."""
        return cls(
            FleetBaselines(DetectorConfig.from_settings(settings)), RuleSet.default(settings)
        )

    def observe(self, batch: HeartbeatBatch) -> ShardOutput:
        """Judge the rules, then score and learn, for every heartbeat of ``batch``."""
        if not len(batch):
            return ShardOutput()
        before = BaselineInputs.from_fleet(self.baselines, batch)
        judged = self.rules.observe(batch, before)
        scored = self.baselines.observe(batch)
        return ShardOutput(scored.anomalies, scored.baselines, judged.threats)
