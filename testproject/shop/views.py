from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.request import RawPostDataException
from django.middleware.csrf import get_token
from django.utils.html import format_html
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework import authentication, mixins, parsers, permissions, viewsets
from rest_framework.exceptions import ParseError
from rest_framework.serializers import BaseSerializer

try:
    from drf_spectacular.openapi import AutoSchema
except ImportError:  # drf-spectacular is optional: without it there is no /api/schema/
    from rest_framework.schemas.openapi import AutoSchema  # type: ignore[assignment]

from idempotency.decorators import idempotent
from idempotency.rest_framework import IdempotencyMixin
from shop.models import Order, Payment, Upload, WebhookEvent
from shop.serializers import OrderSerializer, UploadSerializer

MAX_AMOUNT = Decimal("100000000")  # DecimalField(max_digits=10, decimal_places=2)
CENT = Decimal("0.01")
DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
AMOUNT_FORMAT = 'Must be a decimal number, e.g. "12.50".'
INVALID_TEXT = "Strings may not hold NUL characters or unpaired surrogates."


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, with JSON nested too deeply for Python a 400, not a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None


VALIDATION_ERRORS: dict[str, Any] = {
    "description": "The body does not validate: the messages of each field that does "
    "not (or `non_field_errors`), or a `detail` when the body cannot be parsed.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}},
                    ]
                },
            }
        }
    },
}

NOT_FOUND: dict[str, Any] = {
    "description": "No such object among the signed-in user's, or an id that is not one.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
            }
        },
        # An id that is not a number matches no URL: Django's own page.
        "text/html": {"schema": {"type": "string"}},
    },
}


class ShopSchema(AutoSchema):
    """drf-spectacular's schema, plus the errors DRF answers for these views itself:
    400 for a body that does not validate, 404 on a route with an id."""

    def get_operation(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(path, *args, **kwargs)
        if operation is None:
            return None
        responses = operation.setdefault("responses", {})
        if self.method in ("POST", "PUT", "PATCH"):
            responses.setdefault("400", VALIDATION_ERRORS)
        if "{" in path:
            responses.setdefault("404", NOT_FOUND)
        return operation


class UploadSchema(ShopSchema):
    def map_parsers(self) -> list[str]:
        # A file travels in multipart only; FormParser is there for the error it gives.
        return ["multipart/form-data"]


class OrderViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    """The signed-in user's orders; unsafe requests may carry an ``Idempotency-Key``."""

    serializer_class = OrderSerializer
    authentication_classes = [
        authentication.TokenAuthentication,
        authentication.SessionAuthentication,
    ]
    permission_classes = [permissions.IsAuthenticated]
    # A JSON API: a form body cannot say what its schema says (every field is a string,
    # and a body that does not parse is an empty, valid, partial update), so it is 415.
    parser_classes = [JSONParser]
    schema = ShopSchema()

    def get_queryset(self) -> QuerySet[Order]:
        if getattr(self, "swagger_fake_view", False):
            return Order.objects.none()  # drf-spectacular reads the model, not the rows
        return Order.objects.filter(user=self.request.user)

    def perform_create(self, serializer: BaseSerializer[Order]) -> None:
        serializer.save(user=self.request.user)


def _error(status: int, error: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": error, "detail": detail, **extra}, status=status)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large a number")
    return value


def _parse_json_object(request: HttpRequest, *, decimals: bool = False) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is anything else (never raises).

    NaN, Infinity and numbers too large for a float (1e400) are refused: neither
    SQLite's nor PostgreSQL's JSON accepts them.
    """
    try:
        data = json.loads(
            request.body,
            parse_float=Decimal if decimals else _finite_float,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError, RequestDataTooBig, RawPostDataException):
        return None
    return data if isinstance(data, dict) else None


def _storable(data: Any) -> bool:
    """False when a string in ``data`` cannot be stored: NUL characters, lone surrogates."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str) and not _storable_text(value):
            return False
    return True


def _storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _payment_json(payment: Payment) -> dict[str, Any]:
    return {
        "id": payment.pk,
        "amount": str(payment.amount),
        "currency": payment.currency,
        "reference": payment.reference,
    }


def _clean_amount(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(AMOUNT_FORMAT)
    if isinstance(value, str) and not DECIMAL_RE.fullmatch(value):
        raise ValueError(AMOUNT_FORMAT)
    amount = Decimal(value)
    if amount <= 0:
        raise ValueError("Must be greater than 0.")
    if amount >= MAX_AMOUNT:
        raise ValueError(f"Must be less than {MAX_AMOUNT}.")
    if amount != amount.quantize(CENT):
        raise ValueError("Must have at most 2 decimal places.")
    return amount.quantize(CENT)


def _clean_currency(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 3 or not value.isascii() or not value.isalpha():
        raise ValueError('Must be a 3-letter ISO 4217 code, e.g. "EUR".')
    return value.upper()


def _clean_reference(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("Must be a string.")
    if len(value) > 100:
        raise ValueError("Must be at most 100 characters.")
    return value


@csrf_exempt
@require_POST
def create_payment(request: HttpRequest) -> JsonResponse:
    """Create a payment from ``{"amount": "12.50", "currency": "EUR", "reference": "..."}``.

    No decorator: the ``IdempotencyMiddleware`` protects it when the request has a key.
    """
    data = _parse_json_object(request, decimals=True)
    if data is None:
        return _error(400, "invalid_json", "The body must be a JSON object.")
    if not _storable(data):
        return _error(400, "invalid_json", INVALID_TEXT)
    cleaners = {
        "amount": _clean_amount,
        "currency": _clean_currency,
        "reference": _clean_reference,
    }
    cleaned: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field, clean in cleaners.items():
        if field not in data:
            if field != "reference":
                errors[field] = "This field is required."
            continue
        try:
            cleaned[field] = clean(data[field])
        except ValueError as exc:
            errors[field] = str(exc)
    if errors:
        return _error(400, "invalid_payment", "Some fields are invalid.", fields=errors)
    payment = Payment.objects.create(**cleaned)
    return JsonResponse(_payment_json(payment), status=201)


@csrf_exempt
@require_GET
def payment_detail(request: HttpRequest, pk: int) -> JsonResponse:
    payment = Payment.objects.filter(pk=pk).first()
    if payment is None:
        return _error(404, "not_found", f"No payment with id {pk}.")
    return JsonResponse(_payment_json(payment))


def event_id_from_body(request: HttpRequest) -> str | None:
    """The webhook event's ``id`` from the JSON body, used as the idempotency key.

    None (never an exception) when the body is not a JSON object or has no usable id.
    """
    data = _parse_json_object(request)
    if data is None:
        return None
    event_id = data.get("id")
    if isinstance(event_id, bool):
        return None
    if isinstance(event_id, int) or (isinstance(event_id, str) and event_id):
        return str(event_id)
    return None


def webhook_scope(request: HttpRequest) -> str:
    """Deliveries are anonymous: a scope of their own keeps other anonymous requests
    (an ``Idempotency-Key`` sent to /payments/) from holding an event id."""
    return "webhook:events"


@csrf_exempt
@require_POST
@idempotent(required=True, key_func=event_id_from_body, scope_func=webhook_scope)
def webhook(request: HttpRequest) -> JsonResponse:
    """Store a webhook event once, however often the sender delivers it.

    The sender's event id is the idempotency key, so a redelivery gets the first
    delivery's response and the event is not stored twice.
    """
    event_id = event_id_from_body(request)
    data = _parse_json_object(request)
    if event_id is None or data is None:
        return _error(400, "invalid_event", 'The body must be a JSON object with an "id".')
    if not _storable(data):
        return _error(400, "invalid_event", INVALID_TEXT)
    if len(event_id) > 255:
        return _error(400, "invalid_event", "The event id must be at most 255 characters.")
    event_type = data.get("type", "")
    if not isinstance(event_type, str) or len(event_type) > 100:
        return _error(400, "invalid_event", '"type" must be a string of at most 100 characters.')
    # The unique event_id still holds once the stored response has expired.
    WebhookEvent.objects.get_or_create(
        event_id=event_id, defaults={"type": event_type, "payload": data}
    )
    return JsonResponse({"received": event_id})


UPLOAD_FORM = """<!doctype html>
<title>Upload</title>
<form method="post" enctype="multipart/form-data">
<input type="hidden" name="csrfmiddlewaretoken" value="{}">
<p><label>File <input type="file" name="file"></label></p>
<p><label>or text <textarea name="content"></textarea></label></p>
<p><label>Name <input name="name" maxlength="255"></label></p>
<p><label>Note <input name="note" maxlength="200"></label></p>
<p><button>Upload</button></p>
</form>
"""


def _upload_json(upload: Upload) -> dict[str, Any]:
    return {
        "id": upload.pk,
        "name": upload.name,
        "size": upload.size,
        "sha256": upload.sha256,
        "note": upload.note,
    }


@require_http_methods(["GET", "POST"])
def uploads(request: HttpRequest) -> HttpResponse:
    """A form (GET) that saves a file, or a pasted text, with a note (POST).

    CSRF-protected like any form; no decorator: the ``IdempotencyMiddleware``
    protects it when the request has a key.
    """
    if request.method == "GET":
        return HttpResponse(format_html(UPLOAD_FORM, get_token(request)))
    upload = request.FILES.get("file")
    content = request.POST.get("content", "")
    name = request.POST.get("name", "")
    note = request.POST.get("note", "")
    errors: dict[str, str] = {}
    if upload is None and not content:
        errors["file"] = "Send a file, or a text in content."
    elif upload is not None and content:
        errors["content"] = "Send a file or a text, not both."
    if len(name) > 255:
        errors["name"] = "Must be at most 255 characters."
    if len(note) > 200:
        errors["note"] = "Must be at most 200 characters."
    if not _storable({"name": name, "note": note}):
        errors["note"] = INVALID_TEXT
    if errors:
        return _error(400, "invalid_upload", "Some fields are invalid.", fields=errors)
    if upload is not None:
        size, sha256 = Upload.measure(upload.chunks())
        name = name or (upload.name or "")[:255]
    else:
        size, sha256 = Upload.measure([content.encode()])
    saved = Upload.objects.create(name=name, size=size, sha256=sha256, note=note)
    return JsonResponse(_upload_json(saved), status=201)


class UploadViewSet(IdempotencyMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """``POST /api/uploads/``: a multipart (or urlencoded) upload through DRF's parsers."""

    queryset = Upload.objects.all()
    serializer_class = UploadSerializer
    authentication_classes = [
        authentication.TokenAuthentication,
        authentication.SessionAuthentication,
    ]
    permission_classes = [permissions.IsAuthenticated]
    parser_classes = [parsers.MultiPartParser, parsers.FormParser]
    schema = UploadSchema()
