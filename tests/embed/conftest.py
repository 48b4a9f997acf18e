"""Fixtures of the embedding tests: the agent tests' store and download parts."""

from tests.agent.conftest import events, make_downloads, paths, settings  # noqa: F401 - fixtures
