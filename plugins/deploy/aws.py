"""``DeployAws``: the deploy plugin's only AWS I/O — compose files in S3 and registry credentials.

Owns the boto3 clients the deploy plugin uses (S3, ECR, Secrets Manager), bound to
``aws.region`` and ``aws.endpoints[service]`` / ``aws.endpoint_url``, and translating botocore's
errors into :class:`~headwater.plugins.deploy.errors.SourceFetchError` and
:class:`~headwater.plugins.deploy.errors.CredentialsError`. boto3 is blocking: each call runs in
a worker thread.

Credentials it fetches are returned to the caller in memory and never logged, stored or put in
an exception message. botocore logs whole response bodies at DEBUG (``botocore.parsers``);
Headwater keeps botocore at WARNING, and a filter installed here drops any such record that
holds a secret or an ECR token, whatever the log level. What it fetches:

* ECR: ``ecr.get_authorization_token`` for the account and region of every
  ``<account>.dkr.ecr.<region>.amazonaws.com`` image (the token is a password for user ``AWS``,
  valid 12 hours; fetched per deployment).
* Named credentials (``deploy.registries``): ``secretsmanager.get_secret_value`` of the secret,
  whose ``SecretString`` is ``{"username": ..., "password": ...}``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from headwater.plugins.deploy.errors import CredentialsError, SourceFetchError
from headwater.plugins.deploy.validate import ecr_registry, registry_of

if TYPE_CHECKING:
    from headwater.core.config import AwsConfig, RegistryCredential
    from headwater.wire.deploy import S3Reference

__all__ = ["DeployAws"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_CLIENT_CONFIG: Final = Config(
    retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60
)


_SECRET_MARKERS: Final = (b"SecretString", b"SecretBinary", b"authorizationToken")


class _SecretResponseFilter(logging.Filter):
    """Drops botocore's DEBUG records of response bodies that carry credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        for argument in record.args if isinstance(record.args, tuple) else ():
            data = argument if isinstance(argument, bytes) else str(argument).encode(errors="replace")
            if any(marker in data for marker in _SECRET_MARKERS):
                return False
        return True


def _install_log_filter() -> None:
    botocore_parsers = logging.getLogger("botocore.parsers")
    if not any(isinstance(existing, _SecretResponseFilter) for existing in botocore_parsers.filters):
        botocore_parsers.addFilter(_SecretResponseFilter())


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc)


class DeployAws:
    """S3, ECR and Secrets Manager for deployments (see the module docstring)."""

    def __init__(self, aws: AwsConfig) -> None:
        _install_log_filter()
        self._aws = aws
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _client(self, service: str, region: str | None = None) -> Any:
        region = region or self._aws.region
        with self._lock:
            client = self._clients.get((service, region))
            if client is None:
                endpoint = self._aws.endpoints.get(service) or self._aws.endpoint_url
                client = boto3.session.Session().client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    endpoint_url=endpoint,
                    config=_CLIENT_CONFIG,
                )
                self._clients[(service, region)] = client
            return client

    async def aclose(self) -> None:
        """Close the clients' connections."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await asyncio.to_thread(client.close)

    async def _run(self, function: Callable[[], T]) -> T:
        return await asyncio.to_thread(function)

    # --- compose files in S3 ----------------------------------------------------------------

    async def fetch_compose(self, reference: S3Reference, *, max_size: int) -> str:
        """The text of the compose file at ``reference``; raises SourceFetchError."""
        where = f"s3://{reference.bucket}/{reference.key}" + (
            f" (version {reference.version})" if reference.version else ""
        )

        def fetch() -> bytes:
            arguments: dict[str, str] = {"Bucket": reference.bucket, "Key": reference.key}
            if reference.version:
                arguments["VersionId"] = reference.version
            answer = self._client("s3").get_object(**arguments)
            body = answer["Body"]
            try:
                if int(answer.get("ContentLength") or 0) > max_size:
                    raise SourceFetchError(
                        f"{where} has {answer['ContentLength']} bytes, "
                        f"more than deploy.max_compose_size ({max_size})"
                    )
                data: bytes = body.read(max_size + 1)
            finally:
                body.close()
            if len(data) > max_size:
                raise SourceFetchError(f"{where} is larger than deploy.max_compose_size ({max_size})")
            return data

        try:
            data = await self._run(fetch)
        except (ClientError, BotoCoreError) as exc:
            raise SourceFetchError(f"cannot fetch the compose file {where}: {_reason(exc)}") from exc
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise SourceFetchError(f"the compose file {where} is not UTF-8 text") from exc

    # --- registry credentials ---------------------------------------------------------------

    async def registry_credentials(
        self, *, images: Sequence[str], named: Sequence[RegistryCredential]
    ) -> dict[str, tuple[str, str]]:
        """``{registry host: (username, password)}`` for ``named`` and every ECR host of ``images``.

        A named credential that can't be fetched raises :class:`CredentialsError` (the operator
        asked for it). An ECR token that can't be fetched is logged and left out: an image
        already on the gateway still runs (``pull: missing``), one that is not fails to pull with
        the registry's own error.
        """
        credentials: dict[str, tuple[str, str]] = {}
        for host in dict.fromkeys(registry_of(image) for image in images):
            location = ecr_registry(host)
            if location is None:
                continue
            try:
                credentials[host] = await self._run(functools.partial(self._ecr_token, *location))
            except (ClientError, BotoCoreError, CredentialsError) as exc:
                logger.warning(
                    "deploy: no ECR token for %s (pulls from it will fail): %s", host, _reason(exc)
                )
        for credential in named:
            try:
                credentials[credential.server] = await self._run(functools.partial(self._secret, credential))
            except (ClientError, BotoCoreError) as exc:
                raise CredentialsError(
                    f"registry credential {credential.name!r}: cannot read secret {credential.secret_id!r} "
                    f"from Secrets Manager: {_reason(exc)}"
                ) from exc
        return credentials

    def _ecr_token(self, account: str, region: str) -> tuple[str, str]:
        answer = self._client("ecr", region).get_authorization_token(registryIds=[account])
        data = answer.get("authorizationData") or []
        if not data:
            raise CredentialsError(f"ECR returned no authorization data for account {account}")
        try:
            user, _, password = base64.b64decode(data[0]["authorizationToken"]).decode().partition(":")
        except (KeyError, ValueError) as exc:
            raise CredentialsError("ECR returned a malformed authorization token") from exc
        return user, password

    def _secret(self, credential: RegistryCredential) -> tuple[str, str]:
        answer = self._client("secretsmanager").get_secret_value(SecretId=credential.secret_id)
        problem = (
            f"registry credential {credential.name!r}: secret {credential.secret_id!r} must hold "
            '{"username": ..., "password": ...} as its SecretString'
        )
        try:
            document = json.loads(answer.get("SecretString") or "")
        except ValueError as exc:
            raise CredentialsError(problem) from exc
        if not isinstance(document, dict):
            raise CredentialsError(problem)
        user, password = document.get("username"), document.get("password")
        if not isinstance(user, str) or not isinstance(password, str) or not user:
            raise CredentialsError(problem)
        return user, password
