"""OpenAPI schemas with drf-spectacular for views that use :class:`IdempotencyMixin`.

Loaded by the app's ``ready()`` when ``drf_spectacular`` is in ``INSTALLED_APPS``;
importing it registers two drf-spectacular extensions:
:class:`IdempotencyViewExtension`, and the one that describes the
``IdempotencyProblem`` component. Each operation that the mixin protects (its
method is in ``METHODS``, neither the view nor the action is exempt) gets:

- the key header (``HEADER``), required where the view requires a key;
- the problem responses the app can answer (400, ``MISMATCH_STATUS``, 409, 413,
  500, 503), ``application/problem+json`` with the ``IdempotencyProblem``
  schema, and ``Retry-After`` where a problem can carry it;
- the ``Idempotent-Replayed`` header on the responses the view declares.

The view extension gives these to the operations the view's own schema builds.
An operation whose method carries a schema class of its own (``@extend_schema``
on the method, ``@extend_schema_view``, ``@action(schema=...)``) is built by
that class instead; it gets them when the view's schema class has
:class:`IdempotencySchemaMixin` in front (:class:`IdempotencyAutoSchema`, which
``DEFAULT_SCHEMA_CLASS`` may name). Views protected by the middleware have no
mixin to look at: add the header with :func:`idempotency_key_parameter`, or
everything with a schema class that has :class:`IdempotencySchemaMixin` in
front.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiViewExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers, viewsets

from idempotency.conf import Resolved, idempotency_settings
from idempotency.decorators import exempts
from idempotency.engine import REPLAYED_HEADER
from idempotency.problems import CONTENT_TYPE
from idempotency.rest_framework import IdempotencyMixin

if TYPE_CHECKING:
    from drf_spectacular.plumbing import ComponentRegistry
    from rest_framework.views import APIView

    _SchemaBase = AutoSchema
else:
    _SchemaBase = object

__all__ = [
    "PROBLEM_COMPONENT",
    "IdempotencyAutoSchema",
    "IdempotencySchemaMixin",
    "IdempotencyViewExtension",
    "idempotency_key_parameter",
    "key_pattern",
]

#: Name of the problem details schema in ``components/schemas``.
PROBLEM_COMPONENT = "IdempotencyProblem"

# Character classes of idempotency.keys.parse_header, in \xNN escapes so that the
# pattern reads the same in ECMA-262 (with or without the u flag) and in Python.
_BARE_FIRST = r"[\x21\x23-\x2B\x2D-\x7E]"  # no space, quote or comma
_BARE_INNER = r"[\x20-\x2B\x2D-\x7E]"  # no comma
_BARE_LAST = r"[\x21-\x2B\x2D-\x7E]"  # no space or comma
_QUOTED_CHAR = r"(?:[\x20\x21\x23-\x5B\x5D-\x7E]|\x5C[\x22\x5C])"  # or \" and \\


def key_pattern(max_length: int) -> str:
    """The regular expression a header value matches when ``parse_header`` accepts it.

    A bare token of 1 to ``max_length`` printable ASCII characters without a
    comma, that neither starts with ``"`` nor starts or ends with a space; or an
    sf-string, ``"..."``, whose unescaped key is 1 to ``max_length`` characters.
    HTTP strips the spaces around a field value (RFC 9110, section 5.5), so those
    the parser would strip too are left out.
    """
    bare = _BARE_FIRST
    if max_length > 1:
        bare += f"(?:{_BARE_INNER}{{0,{max_length - 2}}}{_BARE_LAST})?"
    return f'^(?:{bare}|"{_QUOTED_CHAR}{{1,{max_length}}}")$'


def _key_schema(settings: Resolved) -> dict[str, Any]:
    # maxLength bounds the field value: a quoted key whose characters are all
    # escaped takes two characters each, plus the quotes.
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": 2 * settings.max_key_length + 2,
        "pattern": key_pattern(settings.max_key_length),
    }


_CODE_DESCRIPTIONS = {
    "idempotency_key_missing": "the request has no key and this operation requires one",
    "idempotency_key_invalid": (
        "the key is malformed: empty, too long, not printable ASCII, or more than one"
    ),
    "idempotency_key_mismatch": "the key was already used for a different request",
    "idempotency_key_locked": "a request with this key is still being processed",
    "idempotency_request_too_large": "the body is too large to be fingerprinted",
    "idempotency_response_too_large": (
        "the response was too large to store: the request's writes were rolled back "
        "and the key released"
    ),
    "idempotency_response_not_kept": (
        "the response to the first request under this key was too large to store; the "
        "view does not run again for this key"
    ),
    "idempotency_store_unavailable": (
        "the idempotency store could not be reached and the request was not processed; "
        "retrying with the same key is safe"
    ),
}

_BEFORE_PARAMETERS = frozenset({"operationId", "description", "summary"})

#: Codes whose responses carry ``Retry-After``.
_RETRY_CODES = frozenset({"idempotency_key_locked", "idempotency_store_unavailable"})


def _key_description(settings: Resolved) -> str:
    return (
        "Makes the request safe to retry. A retry with the same key and the same request "
        f"gets the first response again, with `{REPLAYED_HEADER}: true`, instead of "
        "running twice. Send a new random value (a UUID) for each new operation. At most "
        f"{settings.max_key_length} printable ASCII characters, without a comma; or "
        'those characters as an RFC 9651 string: in double quotes, `"` written `\\"` '
        "and `\\` written `\\\\`, commas allowed."
    )


def idempotency_key_parameter(*, required: bool | None = None) -> OpenApiParameter:
    """The key header as an ``OpenApiParameter``, for DRF views without the mixin.

    For views the middleware protects (``@api_view`` functions, ``APIView``
    classes): ``@extend_schema(parameters=[idempotency_key_parameter()])``.
    ``required`` defaults to the ``REQUIRED`` setting. Reads the settings when
    called.
    """
    settings = idempotency_settings.get()
    return OpenApiParameter(
        name=settings.header,
        type=_key_schema(settings),
        location=OpenApiParameter.HEADER,
        required=settings.required if required is None else required,
        description=_key_description(settings),
    )


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "An RFC 9457 problem details document answered by django-idempotency, "
            "with an extra `code` member."
        ),
        "properties": {
            "type": {
                "type": "string",
                "format": "uri-reference",
                "description": "The problem type (the PROBLEM_TYPES setting may change it).",
            },
            "title": {"type": "string", "description": "A short summary of the problem type."},
            "status": {"type": "integer", "description": "The HTTP status code."},
            "detail": {"type": "string", "description": "What went wrong with this request."},
            "code": {
                "type": "string",
                "description": "Machine-readable error code, one of: "
                + ", ".join(f"`{code}`" for code in _CODE_DESCRIPTIONS)
                + ".",
            },
        },
        "required": ["type", "title", "status", "detail", "code"],
    }


class _Problem(serializers.Serializer):
    """A problem details document of the app, as ``_ProblemExtension`` describes it."""


class _ProblemExtension(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """The ``IdempotencyProblem`` component, the schema of :class:`_Problem`."""

    target_class = _Problem

    def get_name(self, auto_schema: AutoSchema, direction: str) -> str:
        return PROBLEM_COMPONENT

    def map_serializer(self, auto_schema: AutoSchema, direction: str) -> dict[str, Any]:
        return _problem_schema()


def _problem_codes(settings: Resolved, required: bool) -> dict[int, list[str]]:
    """The error codes each status can carry, as the engine answers them."""
    codes: dict[int, list[str]] = {}
    if required:
        codes.setdefault(400, []).append("idempotency_key_missing")
    codes.setdefault(400, []).append("idempotency_key_invalid")
    codes.setdefault(settings.mismatch_status, []).append("idempotency_key_mismatch")
    codes.setdefault(409, []).append("idempotency_key_locked")
    codes.setdefault(413, []).append("idempotency_request_too_large")
    # A response too large to store (MAX_RESPONSE_SIZE, or what the database takes):
    # with ATOMIC, which a view's options may change, and without.
    codes.setdefault(500, []).extend(
        ["idempotency_response_too_large", "idempotency_response_not_kept"]
    )
    codes.setdefault(503, []).append("idempotency_store_unavailable")
    return dict(sorted(codes.items()))


def _problem_response(status: int, codes: list[str], ref: dict[str, str]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": " ".join(f"`{code}`: {_CODE_DESCRIPTIONS[code]}." for code in codes),
        "content": {
            CONTENT_TYPE: {
                "schema": {
                    "allOf": [
                        ref,
                        {
                            "type": "object",
                            "properties": {
                                "status": {"type": "integer", "enum": [status]},
                                "code": {"type": "string", "enum": codes},
                            },
                        },
                    ]
                }
            }
        },
    }
    if _RETRY_CODES.intersection(codes):
        response["headers"] = {
            "Retry-After": {
                "schema": {"type": "integer", "minimum": 0},
                "description": (
                    "Seconds to wait before retrying (the RETRY_AFTER setting), sent with "
                    + " and ".join(f"`{c}`" for c in codes if c in _RETRY_CODES)
                    + "."
                ),
            }
        }
    return response


def _replayed_header() -> dict[str, Any]:
    return {
        "schema": {"type": "string", "enum": ["true"]},
        "description": (
            "`true` when this is the stored response of an earlier request with the same "
            "key, replayed; absent otherwise."
        ),
    }


def _has(mapping: dict[str, Any], name: str) -> bool:
    lowered = name.lower()
    return any(key.lower() == lowered for key in mapping)


def _add_parameter(operation: dict[str, Any], parameter: dict[str, Any]) -> None:
    if "parameters" in operation:
        operation["parameters"].append(parameter)
        return
    # Where drf-spectacular puts them: before tags, request body, security and responses.
    items = list(operation.items())
    position = next(
        (i for i, (key, _) in enumerate(items) if key not in _BEFORE_PARAMETERS), len(items)
    )
    items.insert(position, ("parameters", [parameter]))
    operation.clear()
    operation.update(items)


def _status_order(item: tuple[str, Any]) -> tuple[int, str]:
    """Status codes in ascending order, then ``default`` and ranges such as ``2XX``."""
    status = item[0]
    return (int(status), "") if status.isdigit() else (1000, status)


def _covering(responses: dict[str, Any], status: int) -> dict[str, Any] | None:
    """The response the operation gives for ``status`` without an exact entry:
    its range (``4XX``), else ``default``."""
    found: dict[str, Any] | None = responses.get(f"{status // 100}XX", responses.get("default"))
    return found


def _handler_name(view: Any, method: str) -> str:
    """The name of the method that handles ``method``: a viewset's action, else the
    method's own handler."""
    action = getattr(view, "action", None) if isinstance(view, viewsets.ViewSetMixin) else None
    return str(action or method.lower())


def _key_header(settings: Resolved, required: bool) -> dict[str, Any]:
    """The key header as an operation's parameter, as drf-spectacular writes them."""
    parameter: dict[str, Any] = {
        "in": OpenApiParameter.HEADER,
        "name": settings.header,
        "schema": _key_schema(settings),
        "description": _key_description(settings),
    }
    if required:
        parameter["required"] = True
    return parameter


def _key_excluded(schema: AutoSchema, settings: Resolved) -> bool:
    """True when ``@extend_schema`` excluded the key header from the operation."""
    return any(
        isinstance(p, OpenApiParameter)
        and p.exclude
        and p.location == OpenApiParameter.HEADER
        and p.name.lower() == settings.header.lower()
        for p in schema.get_override_parameters()
    )


def _document(schema: AutoSchema, operation: dict[str, Any], method: str) -> None:
    """Adds what the mixin does to ``operation``, which ``schema`` has just built."""
    view: Any = schema.view
    settings = idempotency_settings.get()
    if method.upper() not in settings.methods or exempts(view, _handler_name(view, method)):
        return

    required = getattr(view, "idempotency_required", None)
    if required is None:
        required = settings.required
    get_options = getattr(view, "get_idempotency_options", None)
    # A key_func (or get_idempotency_key) replaces the header as the key's source.
    reads_header = get_options is None or get_options().key_func is None
    if reads_header and not _key_excluded(schema, settings):
        parameters = operation.get("parameters", [])
        if not any(
            p.get("in") == "header" and p.get("name", "").lower() == settings.header.lower()
            for p in parameters
        ):
            _add_parameter(operation, _key_header(settings, required))

    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, response in responses.items():
        # A $ref response lives in components: not this operation's to change.
        if "$ref" in response or not status.isdigit():
            continue
        if int(status) not in settings.non_storable:
            headers = response.setdefault("headers", {})
            if not _has(headers, REPLAYED_HEADER):
                headers[REPLAYED_HEADER] = _replayed_header()

    ref = schema.resolve_serializer(_Problem, "response").ref
    for status_code, codes in _problem_codes(settings, required).items():
        ours = _problem_response(status_code, codes, ref)
        existing = responses.get(str(status_code))
        if existing is None:
            covering = _covering(responses, status_code)
            if covering is None:
                responses[str(status_code)] = ours
                continue
            if "$ref" in covering:
                # An exact status would take the shared response's place.
                continue
            # An exact status takes precedence over 4XX or default: it keeps
            # what they say and adds ours.
            existing = copy.deepcopy(covering)
            existing["description"] = " ".join(
                filter(None, [covering.get("description", ""), ours["description"]])
            )
            if status_code not in settings.non_storable:
                existing.setdefault("headers", {})[REPLAYED_HEADER] = _replayed_header()
            responses[str(status_code)] = existing
        if "$ref" in existing:
            continue
        existing.setdefault("content", {}).setdefault(CONTENT_TYPE, ours["content"][CONTENT_TYPE])
        for name, header in ours.get("headers", {}).items():
            headers = existing.setdefault("headers", {})
            if not _has(headers, name):
                headers[name] = header
    operation["responses"] = dict(sorted(responses.items(), key=_status_order))


class IdempotencySchemaMixin(_SchemaBase):
    """Adds what the mixin does to an operation, after the base schema built it.

    In front of drf-spectacular's ``AutoSchema`` or of a subclass of it:
    ``class Schema(IdempotencySchemaMixin, AutoSchema)``. On a view with
    :class:`IdempotencyMixin` it documents the view as the mixin protects it,
    the operations of methods with their own ``@extend_schema`` included. On a
    DRF view without the mixin it documents what the middleware does, with the
    settings' defaults.
    """

    def get_operation(
        self,
        path: str,
        path_regex: str,
        path_prefix: str,
        method: str,
        registry: ComponentRegistry,
    ) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation and self._documents_idempotency():
            _document(self, operation, method)
        return operation

    def _documents_idempotency(self) -> bool:
        return True


class IdempotencyAutoSchema(IdempotencySchemaMixin, AutoSchema):
    """drf-spectacular's ``AutoSchema`` with :class:`IdempotencySchemaMixin`, for the
    views with :class:`IdempotencyMixin` only.

    Set it as ``DEFAULT_SCHEMA_CLASS``, or as the ``schema`` of a view with the
    mixin: views without the mixin are left as ``AutoSchema`` builds them.
    """

    def _documents_idempotency(self) -> bool:
        return isinstance(self.view, IdempotencyMixin)


class _ViewSchema(AutoSchema):
    """The schema of a view that :class:`IdempotencyViewExtension` replaced: the view's
    own schema builds each operation, and the mixin's additions are made to it."""

    def __init__(self, replacement: type[APIView]) -> None:
        super().__init__()
        self._replacement = replacement

    def get_operation(
        self,
        path: str,
        path_regex: str,
        path_prefix: str,
        method: str,
        registry: ComponentRegistry,
    ) -> dict[str, Any] | None:
        # The schema the view's class gives its instances, bound to this view.
        after_replacement: Any = super(self._replacement, self.view)
        own: AutoSchema = after_replacement.schema
        operation: dict[str, Any] | None = own.get_operation(
            path, path_regex, path_prefix, method, registry
        )
        if operation:
            _document(own, operation, method)
        return operation


class IdempotencyViewExtension(OpenApiViewExtension):  # type: ignore[no-untyped-call]
    """Documents the views with :class:`IdempotencyMixin` without a change to them.

    Replaces each such view, for the schema generation only, with a subclass whose
    schema runs the view's own (``DEFAULT_SCHEMA_CLASS``, an ``AutoSchema`` subclass
    set as the view's ``schema``, the class ``@extend_schema`` makes on the view)
    and adds to what it built. A view whose schema already has
    :class:`IdempotencySchemaMixin` is left as it is. drf-spectacular uses one view
    extension for a view: one with a higher ``priority`` takes this one's place.
    """

    target_class = "idempotency.rest_framework.IdempotencyMixin"
    match_subclasses = True
    priority = 1

    def view_replacement(self) -> type[APIView]:
        view_class: type[APIView] = self.target
        own = view_class.schema
        if not isinstance(own, AutoSchema) or isinstance(own, IdempotencySchemaMixin):
            return view_class

        class Documented(view_class):  # type: ignore[valid-type,misc]
            # Warnings drf-spectacular prints point at the view's own source.
            __module__ = view_class.__module__
            __qualname__ = view_class.__qualname__

        Documented.__name__ = view_class.__name__
        Documented.schema = _ViewSchema(Documented)
        return Documented
