"""Root conftest: loads the fixture plugins every test can use.

The fixtures live in ``tests/fixtures/`` as plain pytest plugins, one per real thing:

- ``mosquitto``: mosquitto_pub / mosquitto_sub helpers and a reference mosquitto broker;
- ``aws``: an AWS emulator (moto server over HTTP) and boto3 clients bound to it;
- ``docker_engine``: the Docker SDK client, a locally built busybox image, compose projects;
- ``broker``: Headwater's own broker on an ephemeral port.

Tests import ``headwater.*`` from the installed package (``scripts/test`` installs it into
``.venv``); there is no ``headwater/`` folder in the repository that could shadow it.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.mosquitto",
    "tests.fixtures.aws",
    "tests.fixtures.aws_faults",
    "tests.fixtures.docker_engine",
    "tests.fixtures.broker",
    "tests.fixtures.disk",
    "tests.fixtures.image",
]

# A test that uses one of these fixtures gets the marker, so that `-m "not docker"` also
# deselects tests that reach the engine only through a fixture.
_MARKER_FIXTURES = {
    "aws": frozenset({"moto_server", "aws_endpoint_url", "boto3_client", "aws_clients"}),
    "docker": frozenset({"docker_client", "busybox_image", "compose_project"}),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixturenames = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _MARKER_FIXTURES.items():
            if fixturenames & fixtures and item.get_closest_marker(marker) is None:
                item.add_marker(marker)
