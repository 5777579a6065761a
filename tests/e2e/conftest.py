from tests.support.service import service, shared_sandbox  # noqa: F401 - fixtures
