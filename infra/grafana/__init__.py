"""Grafana dashboards as code: four dashboards built with Grafana's foundation SDK, every
panel a SQL query through the official ClickHouse data source plugin.

``python -m infra.grafana`` writes them to ``infra/grafana/dashboards/`` (docs/grafana.md);
``provisioning/`` tells Grafana where they are and how to reach ClickHouse.
"""
