"""The committed JSON Schema files under schemas/ are exactly what the models export."""

from __future__ import annotations

import json

import pytest

from infra.cli import schema_documents, schemas_dir
from schemas.models import EXPORTED

DOCUMENTS = schema_documents()


@pytest.mark.parametrize("file_name", sorted(DOCUMENTS))
def test_the_committed_schema_file_equals_the_models_schema(file_name: str) -> None:
    path = schemas_dir() / file_name
    assert path.exists(), f"{path} is missing; run `agentwatch schemas` and commit the result"
    assert path.read_text(encoding="utf-8") == DOCUMENTS[file_name], (
        f"{path} differs from the model; run `agentwatch schemas` and commit the result"
    )


def test_every_schema_file_belongs_to_an_exported_model() -> None:
    committed = {p.name for p in schemas_dir().glob("*.schema.json")}
    assert committed == {f"{name}.schema.json" for name in EXPORTED}


def test_the_heartbeat_schema_is_the_contract() -> None:
    schema = json.loads(DOCUMENTS["heartbeat.schema.json"])
    assert schema["additionalProperties"] is False
    assert schema["properties"]["cpu_usage"]["maximum"] == 100
    assert schema["properties"]["error_rate"]["maximum"] == 1
    assert {"agent_id", "tenant_id", "timestamp", "bytes_out"} <= set(schema["properties"])


def test_numbers_the_shards_could_not_use_are_refused_where_they_enter() -> None:
    """Found by a fuzzer: a rule window of 1e-300 s made its buckets denormal and every later
    heartbeat batch raise in the shard (stopping the dataflow), and a declared cost beyond
    float32's range made every assignment score of the agent NaN."""
    import pydantic

    from schemas.models import RESOURCE_MAX, MetricCondition, Registration

    condition = {"metric": "cpu_usage", "aggregate": "avg", "op": ">", "value": 90}
    assert MetricCondition(**condition, window_s=1.0).window_s == 1.0
    for window in (1e-300, 5e-324, 0.5):
        with pytest.raises(pydantic.ValidationError, match="window_s"):
            MetricCondition(**condition, window_s=window)
    who = {"name": "a", "agent_type": "bot", "owner": "ops"}
    assert Registration(**who, resources={"cost_per_hour": RESOURCE_MAX}).resources
    with pytest.raises(pydantic.ValidationError, match="cost_per_hour"):
        Registration(**who, resources={"cost_per_hour": 3.5e38})
