"""Errors of the mock PSP, each with a stable machine-readable ``code`` and an HTTP status.

Expected outcomes (bad input, declines, idempotency conflicts, injected faults) are
``ApiError`` subclasses: the core turns them into Stripe's error body in one place
(``ApiError.to_body``). Broken invariants are ``IllegalTransition`` or a plain
``assert`` and stop the world: they are bugs in the mock, never answers to a client.

    PspError                          code, http_status
    +-- ApiError                      becomes {"error": {...}} in Stripe's shape
    |   +-- InvalidRequestError       400 invalid_request_error (param names the field)
    |   |   +-- ParameterMissing      400 parameter_missing
    |   |   +-- ParameterUnknown      400 parameter_unknown
    |   |   +-- ParameterInvalid      400 parameter_invalid_* (integer, boolean, enum, ...)
    |   |   +-- RawCardDataRefused    400 raw_card_data_refused (never echoes the number)
    |   |   +-- UnexpectedState       400 payment_intent_unexpected_state and friends
    |   |   +-- RequestTooLarge       413 request_too_large (a body past the driver's bound)
    |   +-- UnknownRoute              404 (no code, as Stripe's "Unrecognized request URL")
    |   +-- ResourceMissing           404 resource_missing
    |   +-- AuthenticationFailed      401
    |   +-- CardError                 402 card_error (decline_code, payment_intent)
    |   +-- IdempotencyMismatch       400 idempotency_error
    |   +-- IdempotencyKeyInUse       409 idempotency_key_in_use
    |   +-- RateLimited               429 rate_limit
    |   +-- ProviderServerError       500 / 503 api_error (injected faults; a contained bug)
    +-- FaultConfigError              bad fault-plan or provider config (field named)
    +-- IllegalTransition             a transition missing from the state table: a bug
"""

from __future__ import annotations

from typing import Any

JsonDict = dict[str, Any]


class PspError(Exception):
    """Root of every error the mock PSP raises on purpose."""

    code: str = "psp_error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(PspError):
    """An error a client sees as Stripe's ``{"error": {...}}`` body."""

    error_type: str = "api_error"
    code_in_body: bool = True
    # Stripe saves a response under its idempotency key only once the endpoint started
    # executing: validation, auth, rate-limit and conflict errors are not saved.
    saves_idempotent_result: bool = True

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def to_body(self) -> JsonDict:
        # Stripe omits nothing a client may branch on: the six keys are always present.
        return {
            "error": {
                "type": self.error_type,
                "code": self.code if self.code_in_body else None,
                "decline_code": None,
                "message": self.message,
                "param": self.param,
                "payment_intent": None,
            }
        }


class InvalidRequestError(ApiError):
    code = "invalid_request"
    http_status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param)
        if code is not None:
            self.code = code


class ParameterMissing(InvalidRequestError):
    code = "parameter_missing"
    saves_idempotent_result = False

    def __init__(self, param: str) -> None:
        super().__init__(f"Missing required param: {param}.", param=param)


class ParameterUnknown(InvalidRequestError):
    code = "parameter_unknown"
    saves_idempotent_result = False

    def __init__(self, param: str) -> None:
        super().__init__(f"Received unknown parameter: {param}", param=param)


class ParameterInvalid(InvalidRequestError):
    code = "parameter_invalid"
    saves_idempotent_result = False

    def __init__(self, param: str, message: str, *, code: str = "parameter_invalid") -> None:
        super().__init__(message, param=param, code=code)


class RawCardDataRefused(InvalidRequestError):
    code = "raw_card_data_refused"
    saves_idempotent_result = False

    def __init__(self, param: str) -> None:
        # The number itself is never echoed: it must not reach logs or saved responses.
        super().__init__(
            "Sending card numbers directly to the API is refused; use a test payment "
            "method such as pm_card_visa.",
            param=param,
        )


class UnexpectedState(InvalidRequestError):
    code = "payment_intent_unexpected_state"

    def __init__(
        self,
        message: str,
        *,
        code: str = "payment_intent_unexpected_state",
        param: str | None = None,
        payment_intent: JsonDict | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.payment_intent = payment_intent

    def to_body(self) -> JsonDict:
        body = super().to_body()
        body["error"]["payment_intent"] = self.payment_intent
        return body


class RequestTooLarge(InvalidRequestError):
    """A request body past the HTTP driver's bound: refused before the core sees it."""

    code = "request_too_large"
    http_status = 413
    saves_idempotent_result = False

    def __init__(self, body_bytes_max: int) -> None:
        super().__init__(f"The request body is larger than {body_bytes_max} bytes.")


class UnknownRoute(ApiError):
    code = "unknown_route"
    saves_idempotent_result = False
    http_status = 404
    error_type = "invalid_request_error"
    code_in_body = False


class ResourceMissing(ApiError):
    code = "resource_missing"
    http_status = 404
    error_type = "invalid_request_error"

    def __init__(self, kind: str, object_id: str, *, param: str = "id") -> None:
        super().__init__(f"No such {kind}: '{object_id}'", param=param)


class AuthenticationFailed(ApiError):
    code = "authentication_failed"
    saves_idempotent_result = False
    http_status = 401
    error_type = "invalid_request_error"
    code_in_body = False


class CardError(ApiError):
    code = "card_declined"
    http_status = 402
    error_type = "card_error"

    def __init__(
        self,
        message: str,
        *,
        code: str,
        decline_code: str | None,
        param: str | None = None,
        charge_id: str | None = None,
        payment_intent: JsonDict | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.code = code
        self.decline_code = decline_code
        self.charge_id = charge_id
        self.payment_intent = payment_intent

    def to_body(self) -> JsonDict:
        body = super().to_body()
        body["error"]["decline_code"] = self.decline_code
        body["error"]["payment_intent"] = self.payment_intent
        if self.charge_id is not None:
            body["error"]["charge"] = self.charge_id
        return body


class IdempotencyMismatch(ApiError):
    code = "idempotency_key_reused"
    saves_idempotent_result = False
    http_status = 400
    error_type = "idempotency_error"

    def __init__(self, key: str) -> None:
        super().__init__(
            "Keys for idempotent requests can only be used with the same parameters they "
            f"were first used with. Try using a key other than '{key}' if you meant to "
            "execute a different request."
        )


class IdempotencyKeyInUse(ApiError):
    code = "idempotency_key_in_use"
    saves_idempotent_result = False
    http_status = 409
    error_type = "invalid_request_error"

    def __init__(self, key: str) -> None:
        super().__init__(
            "There is currently another in-progress request using this Idempotent Key "
            f"(that probably means you submitted twice, and the other request is still "
            f"going through): {key}. Please try again later."
        )


class RateLimited(ApiError):
    code = "rate_limit"
    saves_idempotent_result = False
    http_status = 429
    error_type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__("Request rate limit exceeded. Retry after a short delay.")


class ProviderServerError(ApiError):
    code = "api_error"
    error_type = "api_error"

    def __init__(self, http_status: int) -> None:
        assert http_status in (500, 503), http_status
        message = (
            "An unknown error occurred while processing your request."
            if http_status == 500
            else "The service is temporarily unavailable. Please retry."
        )
        super().__init__(message)
        self.http_status = http_status
        # A 503 is load shed before execution (not saved); a 500 is saved and replayed.
        self.saves_idempotent_result = http_status == 500


class FaultConfigError(PspError):
    """A fault plan or provider config that does not validate; ``field`` names the culprit."""

    code = "fault_config_invalid"
    http_status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field

    def to_body(self) -> JsonDict:
        return {
            "error": {
                "type": "invalid_request_error",
                "code": self.code,
                "decline_code": None,
                "message": self.message,
                "param": self.field,
                "payment_intent": None,
            }
        }


class IllegalTransition(PspError):
    """A state change that the transition table forbids. Reaching it is a bug in the mock."""

    code = "illegal_transition"
    http_status = 500
