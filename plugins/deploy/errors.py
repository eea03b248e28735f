"""The deploy plugin's exceptions (the tree is drawn in the package docstring).

Every message is one line meant for a person and for the ``error`` field of a status topic: it
never contains a credential, an environment value or a secret's content.
"""

from __future__ import annotations

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


class DeployError(Exception):
    """Base of the deploy plugin's errors; ``str()`` is a one-line message for a status topic."""


class InvalidDeploymentError(DeployError):
    """The desired state is refused before anything runs (name, size, YAML, model, policy).

    The plugin remembers the refused revision and does not try it again (at a restart, when
    the engine comes back) until the message, the deploy config or ``force`` says otherwise.
    """


class ImagesMissingError(InvalidDeploymentError):
    """``pull: never`` and an image is not on the gateway: tried again at the next start."""


class SourceFetchError(DeployError):
    """The compose file could not be fetched from S3 (``compose_s3``)."""


class CredentialsError(DeployError):
    """Registry credentials could not be obtained (Secrets Manager, ECR)."""


class DockerUnavailableError(DeployError):
    """The Docker engine does not answer: the app waits in state ``pending`` and is retried."""


class EngineError(DeployError):
    """The Docker engine answered with an error."""


class ComposeUnavailableError(DeployError):
    """No usable docker compose v2 program was found."""


class ComposeFailedError(DeployError):
    """``docker compose`` exited with an error; ``output`` holds its last lines."""

    def __init__(self, message: str, output: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.output = output


class ComposeTimeoutError(ComposeFailedError):
    """``docker compose`` ran longer than ``deploy.timeout`` and was killed."""
