"""Deployments: retained messages on ``<prefix>/deploy/<app>`` drive ``docker compose``.

The plugin is :class:`headwater.plugins.deploy.plugin.DeployPlugin` (not imported here: the
docker SDK and boto3 load only when deploy is enabled). The deploy message, its revision and
the status objects are wire shapes, declared in :mod:`headwater.wire.deploy`. Modules:

* :mod:`.model`: compose projects, container states, desired-state parsing (pure);
* :mod:`.validate`: YAML, compose model and policy checks (pure);
* :mod:`.runner`: :class:`~.runner.ComposeRunner`, the only code that runs docker compose;
* :mod:`.engine`: :class:`~.engine.DockerEngine`, what is read from the Docker API;
* :mod:`.aws`: :class:`~.aws.DeployAws`, compose files in S3, ECR tokens, Secrets Manager;
* :mod:`.workspace`: the files under ``<data_dir>/deploy``;
* :mod:`.plugin`: desired states, one worker per app, reconcile, statuses.

docs/deploy.md is the user's side of the same contract.

Exception tree (:mod:`.errors`)::

    DeployError                     one line, fit for a status topic's ``error``
    ├── InvalidDeploymentError      refused before anything runs: name, size, envelope, YAML,
    │   │                           compose model, policy, unknown registry_auth (remembered:
    │   │                           not tried again until the message or the config changes)
    │   └── ImagesMissingError      pull: never and an image is missing (tried again at start)
    ├── SourceFetchError            the compose file could not be fetched from S3
    ├── CredentialsError            registry credentials could not be obtained
    ├── DockerUnavailableError      the engine does not answer: ``pending``, retried
    ├── EngineError                 the engine answered with an error
    ├── ComposeUnavailableError     no docker compose v2 program
    └── ComposeFailedError          docker compose exited with an error (``output``: last lines)
        └── ComposeTimeoutError     ... or ran past ``deploy.timeout`` and was stopped
"""

from headwater.plugins.deploy.errors import (
    ComposeFailedError,
    ComposeTimeoutError,
    ComposeUnavailableError,
    CredentialsError,
    DeployError,
    DockerUnavailableError,
    EngineError,
    ImagesMissingError,
    InvalidDeploymentError,
    SourceFetchError,
)

__all__ = [
    "ComposeFailedError",
    "ComposeTimeoutError",
    "ComposeUnavailableError",
    "CredentialsError",
    "DeployError",
    "DockerUnavailableError",
    "EngineError",
    "ImagesMissingError",
    "InvalidDeploymentError",
    "SourceFetchError",
]
