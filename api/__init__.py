"""The HTTP API of agentwatch (FastAPI): ``create_app`` in :mod:`api.app`, ``python -m api``."""
