"""Translate botocore's exceptions into the export error tree (:mod:`headwater.plugins.upload.sink`).

The one place that knows AWS's error codes. Every export type's service runs its boto3 calls
through :class:`headwater.plugins.upload._client.AwsClient`, which calls :func:`export_error` on
whatever botocore raised; nothing above the service ever sees a botocore exception.

Classification, first match wins:

1. transport failures (botocore's ``ConnectionError`` family: refused, DNS, connect timeout, TLS;
   ``HTTPClientError`` family: connection closed or reset, read timeout; raw urllib3 errors)
   → :class:`ExportOfflineError`;
2. credentials missing or unusable (``NoCredentialsError``, ``PartialCredentialsError``,
   credential-provider failures) and requests botocore refuses to send (``ParamValidationError``:
   the same request would be refused again) → :class:`ExportBlockedError`;
3. an AWS error code in :data:`THROTTLING_CODES` → :class:`ExportThrottledError`. Firehose's
   ``ServiceUnavailableException`` is its throttling signal (AWS: "the throughput limits may
   have been exceeded"), so it is here;
4. an AWS error code in :data:`BLOCKING_CODES` or starting with ``AccessDenied``,
   ``ExpiredToken`` or ``KMS`` → :class:`ExportBlockedError`: credentials, permissions, a target
   that does not exist, a request AWS calls invalid as a whole (retrying the same request soon
   cannot help);
5. any other AWS error with HTTP status 429 or 503 → :class:`ExportThrottledError` (S3 answers
   ``503 SlowDown`` / ``503 ServiceUnavailable`` when asked to slow down);
6. everything else (other 5xx, ``InternalFailure``, a response botocore could not parse)
   → :class:`ExportRetryableError`.

Messages are ``"<Code>: <AWS's message>"`` for AWS errors and ``"<ExceptionName>: <text>"`` for
botocore's own, fit for the export's ``last_error``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import urllib3.exceptions
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    MetadataRetrievalError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.parsers import ResponseParserError

from headwater.plugins.upload.sink import (
    ExportBlockedError,
    ExportError,
    ExportOfflineError,
    ExportRetryableError,
    ExportThrottledError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "AWS_ERRORS",
    "BLOCKING_CODES",
    "THROTTLING_CODES",
    "aws_error_code",
    "error_text",
    "export_error",
    "record_failures",
]

#: What a service catches around a boto3 call and hands to :func:`export_error`.
AWS_ERRORS: Final = (BotoCoreError, ClientError, ResponseParserError, urllib3.exceptions.HTTPError)

THROTTLING_CODES: Final = frozenset(
    {
        "ProvisionedThroughputExceededException",  # Kinesis
        "KMSThrottlingException",  # Kinesis with server-side encryption
        "ThrottlingException",  # Firehose, iot-data
        "Throttling",
        "ThrottledException",
        "ServiceUnavailableException",  # Firehose's "slow down"
        "SlowDown",  # S3
        "LimitExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
    }
)

BLOCKING_CODES: Final = frozenset(
    {
        # credentials and signatures
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidToken",
        "MissingAuthenticationToken",
        "AuthFailure",
        "RequestExpired",  # the gateway's clock is off: retrying soon will not fix it
        "RequestTimeTooSkewed",
        # permissions and accounts
        "ForbiddenException",  # iot-data
        "UnauthorizedException",  # iot-data
        "AllAccessDisabled",
        "AccountProblem",
        "NotSignedUp",
        "OptInRequired",
        # the target does not exist (or lives elsewhere)
        "ResourceNotFoundException",  # Kinesis stream, Firehose delivery stream
        "NoSuchBucket",
        "PermanentRedirect",  # the bucket is in another region
        "AuthorizationHeaderMalformed",
        # the request as a whole is invalid: sending it again is refused again
        "InvalidArgumentException",
        "ValidationException",
        "InvalidKMSResourceException",
    }
)
_BLOCKING_PREFIXES: Final = ("AccessDenied", "ExpiredToken", "KMS")
_THROTTLING_STATUSES: Final = frozenset({429, 503})
_CREDENTIAL_ERRORS: Final = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
    MetadataRetrievalError,
    SSOError,
    ParamValidationError,
)


def aws_error_code(exc: BaseException | None) -> str | None:
    """AWS's error code of a ``ClientError`` (``"AccessDenied"``), else ``None``."""
    if not isinstance(exc, ClientError):
        return None
    return str(exc.response.get("Error", {}).get("Code", "")) or None


def error_text(code: str, message: str | None) -> str:
    """``"<Code>: <message>"``, or the code alone when AWS gave no message."""
    message = (message or "").strip()
    return f"{code}: {message}" if message else code


def record_failures(
    operation: str, sequences: Sequence[int], results: Sequence[Mapping[str, Any]]
) -> dict[int, str]:
    """Sequence → ``"<ErrorCode>: <ErrorMessage>"`` of the records a batch call did not take.

    ``results`` are the per-record answers of PutRecords / PutRecordBatch, in request order;
    a count that does not match the request is a malformed answer (retryable).
    """
    if len(results) != len(sequences):
        msg = f"MalformedResponse: {operation} answered {len(results)} results for {len(sequences)} records"
        raise ExportRetryableError(msg)
    return {
        sequence: error_text(str(result["ErrorCode"]), result.get("ErrorMessage", ""))
        for sequence, result in zip(sequences, results, strict=True)
        if result.get("ErrorCode")
    }


def export_error(exc: BaseException) -> ExportError:
    """The :class:`ExportError` for a failed boto3 call (raise it ``from exc``)."""
    if isinstance(exc, ClientError):
        return _client_error(exc)
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BotocoreConnectionError | HTTPClientError | urllib3.exceptions.HTTPError):
        return ExportOfflineError(message)
    if isinstance(exc, _CREDENTIAL_ERRORS):
        return ExportBlockedError(message)
    return ExportRetryableError(message)


def _client_error(exc: ClientError) -> ExportError:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(error.get("Code", "")) or (f"HTTP {status}" if status else "UnknownError")
    message = error_text(code, str(error.get("Message", "")))
    if code in THROTTLING_CODES:
        return ExportThrottledError(message)
    if code in BLOCKING_CODES or code.startswith(_BLOCKING_PREFIXES):
        return ExportBlockedError(message)
    if status in _THROTTLING_STATUSES:
        return ExportThrottledError(message)
    return ExportRetryableError(message)
