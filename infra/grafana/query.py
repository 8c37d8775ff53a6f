"""A query of the official ClickHouse data source plugin (``grafana-clickhouse-datasource``),
as a foundation-SDK data query: the SDK ships builders for Grafana's core data sources only,
so this module adds the plugin's SQL-editor query in the SDK's own shape (a
:class:`~grafana_foundation_sdk.cog.variants.Dataquery` that is its own builder).
"""

from __future__ import annotations

import enum
from typing import Any, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

#: The plugin's type id (what Grafana calls the plugin in a data source and a query).
PLUGIN_TYPE = "grafana-clickhouse-datasource"
#: The uid the provisioned data source gets (provisioning/datasources/clickhouse.yml), so
#: every panel names it and no one has to pick it after an import.
DATASOURCE_UID = "agentwatch-clickhouse"
DATASOURCE = DataSourceRef(type_val=PLUGIN_TYPE, uid=DATASOURCE_UID)


class Format(enum.IntEnum):
    """How the plugin turns a result into data frames (the ``format`` of a query, as the
    plugin's SQL layer numbers them): a time series wants a time column first and turns
    a long result (time, label, value) into one series per label."""

    TIME_SERIES = 0
    TABLE = 1


class ClickHouseQuery(cogvariants.Dataquery, cogbuilder.Builder["ClickHouseQuery"]):
    """One SQL query of a panel, written in the plugin's SQL editor (``editorType: sql``)
    with the plugin's macros (``$__timeFilter(column)`` …) and dashboard variables.

    >>> query = ClickHouseQuery("SELECT 1", Format.TABLE)
    >>> query.to_json()["datasource"].uid, query.to_json()["queryType"]
    ('agentwatch-clickhouse', 'table')
    """

    def __init__(self, sql: str, format: Format, ref_id: str = "A") -> None:
        self.sql, self.format, self.ref_id = sql.strip(), Format(format), ref_id

    def build(self) -> Self:
        return self

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": DATASOURCE,
            "editorType": "sql",
            "queryType": "timeseries" if self.format == Format.TIME_SERIES else "table",
            "format": int(self.format),
            "rawSql": self.sql,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self | cogruntime.UnknownDataquery:
        """The query of ``data``; a query that is not one of this plugin's SQL queries on
        :data:`DATASOURCE` stays raw (the SDK's ``UnknownDataquery``)."""
        source = data.get("datasource") or {}
        ours = source.get("type") == PLUGIN_TYPE and source.get("uid") == DATASOURCE_UID
        if not ours or not isinstance(data.get("rawSql"), str) or data.get("format") not in (0, 1):
            return cogruntime.UnknownDataquery(data)
        return cls(data["rawSql"], Format(data["format"]), data.get("refId", "A"))


def register() -> None:
    """Teach the SDK's decoder the plugin's queries (``Dashboard.from_json`` then decodes a
    panel's targets of this data source into :class:`ClickHouseQuery`)."""
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=PLUGIN_TYPE, from_json_hook=ClickHouseQuery.from_json)
    )
