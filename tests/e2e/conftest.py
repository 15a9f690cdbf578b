import pytest

from .datasets import red_square_set
from .webui import WebUI, activate, environments, missing_reason

ENVIRONMENTS = environments()
REASON = None if ENVIRONMENTS else missing_reason()


def pytest_report_header(config):
    if REASON:
        return REASON
    return "e2e tier runs on: " + ", ".join(f"{name} ({dest})" for name, dest in ENVIRONMENTS.items())


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if REASON:
                item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session", autouse=True, params=list(ENVIRONMENTS) or ["none"])
def webui_environment(request):
    """Every e2e test runs once per assembled WebUI (torch 2.13, and A1111's own torch 2.1.2):
    pytest groups the tests by environment, so each boots its servers once."""
    if request.param in ENVIRONMENTS:
        activate(ENVIRONMENTS[request.param])
    return request.param


@pytest.fixture(scope="session")
def webui(webui_environment, tmp_path_factory):
    """One API-only server per environment (tiny SD1.5); tests use their own output names."""
    server = WebUI(tmp_path_factory.mktemp(f"webui-data-{webui_environment}")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Four red squares captioned "sks square", 10 repeats (one folder per test module)."""
    return red_square_set(tmp_path_factory.mktemp("ds"))
