"""Launch tests need packages the course itself does not: `make test-launch` installs them."""

import importlib.util

import pytest

MISSING = [name for name in ("playwright", "repo2docker") if importlib.util.find_spec(name) is None]


def pytest_collection_modifyitems(config, items):
    if MISSING:
        raise pytest.UsageError(
            f"tests/launch needs {', '.join(MISSING)}: run `make test-launch`, which installs "
            "tests/launch/requirements.txt into .venv"
        )
