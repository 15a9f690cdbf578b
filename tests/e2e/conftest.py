import pytest

from .webui import WebUI, missing_reason

REASON = missing_reason()


def pytest_report_header(config):
    return REASON or "e2e tier: assembled WebUI found, end-to-end tests will run"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if REASON:
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session")
def webui(tmp_path_factory):
    """One API-only server for the session (tiny SD1.5); tests use their own output names."""
    server = WebUI(tmp_path_factory.mktemp("webui-data")).start()
    yield server
    server.stop()
