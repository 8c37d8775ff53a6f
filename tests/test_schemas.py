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
