from tests.support.fixtures import agent, tiny_hub, tiny_model  # noqa: F401 - fixtures
