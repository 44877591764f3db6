"""OpenAPI schemas with drf-spectacular: what ``idempotency.openapi`` adds to operations.

Every schema is generated with drf-spectacular's ``SchemaGenerator`` over the views
of this module, checked against the OpenAPI 3 JSON Schema with drf-spectacular's
``validate_schema``, and must generate without warnings.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("drf_spectacular")
pytest.importorskip(
    "hypothesis", reason="hypothesis is not installed (pip install -r requirements/property.txt)"
)

import jsonschema
import yaml
from django.core.management import call_command
from django.test import Client
from django.urls import include, path
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.extensions import OpenApiViewExtension
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ComponentIdentity, ResolvedComponent
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rest_framework import generics, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView
from shop.models import Order
from shop.serializers import AMOUNT_PATTERN, ITEM_PATTERN, OrderSerializer

from idempotency.decorators import idempotency_exempt
from idempotency.keys import InvalidKey, parse_header
from idempotency.openapi import (
    PROBLEM_COMPONENT,
    IdempotencyAutoSchema,
    IdempotencySchemaMixin,
    IdempotencyViewExtension,
    idempotency_key_parameter,
    key_pattern,
)
from idempotency.rest_framework import IdempotencyMixin

pytestmark = pytest.mark.urls(__name__)

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "application/problem+json"
KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
#: The testproject's patterns as Python reads them (``\\u0000`` is NUL in both).
ORDER_PATTERNS = {"item": ITEM_PATTERN, "amount": AMOUNT_PATTERN}
ALL_CODES = [
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "idempotency_key_mismatch",
    "idempotency_key_locked",
    "idempotency_request_too_large",
    "idempotency_response_too_large",
    "idempotency_response_not_kept",
    "idempotency_store_unavailable",
]


# -- views ------------------------------------------------------------------------------


class OrderViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    """Orders, documented from the serializer alone."""

    queryset = Order.objects.all()
    serializer_class = OrderSerializer

    @action(detail=True, methods=["post"])
    def ship(self, request: Request, pk: str) -> Response:
        return Response(status=204)

    @idempotency_exempt
    @action(detail=True, methods=["post"])
    def touch(self, request: Request, pk: str) -> Response:
        return Response(status=204)


class RequiredViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    idempotency_required = True


class OptionalViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    idempotency_required = False


class ExemptView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    idempotency_exempt = True


class ValidationErrorSerializer(serializers.Serializer):
    item = serializers.ListField(child=serializers.CharField())


class DeclaredView(IdempotencyMixin, APIView):
    # Its method has a schema class of its own: the view's has the schema mixin.
    schema = IdempotencyAutoSchema()

    @extend_schema(
        request=OrderSerializer,
        responses={
            201: OrderSerializer,
            400: OpenApiResponse(ValidationErrorSerializer, description="Invalid order."),
            409: OpenApiResponse(description="Out of stock."),
            429: OpenApiResponse(description="Slow down."),
        },
        parameters=[OpenApiParameter("X-Request-Id", str, OpenApiParameter.HEADER)],
    )
    def post(self, request: Request) -> Response:
        return Response(status=201)


class RangeView(IdempotencyMixin, APIView):
    schema = IdempotencyAutoSchema()

    @extend_schema(
        request=OrderSerializer,
        responses={
            201: OrderSerializer,
            "4XX": OpenApiResponse(ValidationErrorSerializer, description="Client error."),
        },
    )
    def post(self, request: Request) -> Response:
        return Response(status=201)


@extend_schema(tags=["tagged-class"])
@extend_schema_view(create=extend_schema(summary="Create, from extend_schema_view"))
class ClassDecoratedViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = IdempotencyAutoSchema()


class TaggingSchema(IdempotencySchemaMixin, AutoSchema):
    def get_tags(self) -> list[str]:
        return ["own-schema"]


class OwnSchemaView(IdempotencyMixin, generics.CreateAPIView):
    """Its own AutoSchema subclass, and an @extend_schema on the method too."""

    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = TaggingSchema()

    @extend_schema(summary="Create with an own schema")
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class SharedResponseSchema(AutoSchema):
    """Answers 409 with a response from components/responses."""

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is not None:
            component = ResolvedComponent(
                name="Conflict",
                type=ResolvedComponent.RESPONSE,
                schema={"description": "A shared conflict response."},
                object=ComponentIdentity("Conflict"),
            )
            self.registry.register_on_missing(component)
            operation["responses"]["409"] = component.ref
        return operation


class SharedResponseView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = SharedResponseSchema()


def order_item(request: Request) -> str | None:
    return request.data.get("item")


class KeyFromBodyView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    idempotency_key_func = order_item
    idempotency_required = True


class OwnKeyParameterView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = IdempotencyAutoSchema()

    @extend_schema(parameters=[idempotency_key_parameter(required=True)])
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class HiddenKeyView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = IdempotencyAutoSchema()

    @extend_schema(parameters=[OpenApiParameter(KEY, str, OpenApiParameter.HEADER, exclude=True)])
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class MiddlewareView(generics.CreateAPIView):
    """No mixin: protected by the middleware, documented with the helper."""

    queryset = Order.objects.all()
    serializer_class = OrderSerializer

    @extend_schema(parameters=[idempotency_key_parameter()])
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class MiddlewareSchema(IdempotencySchemaMixin, AutoSchema):
    pass


class MiddlewareSchemaView(generics.CreateAPIView):
    """No mixin: protected by the middleware, documented with the schema mixin."""

    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = MiddlewareSchema()


class PlainView(generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer


class MethodSchemaViewSet(IdempotencyMixin, viewsets.ModelViewSet):
    """A method with its own schema class, and no schema mixin on the view."""

    queryset = Order.objects.all()
    serializer_class = OrderSerializer

    @extend_schema(summary="Create, with a schema class of its own")
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().create(request, *args, **kwargs)


class ExtendedView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = IdempotencyAutoSchema()


class UndocumentedView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer


class ExtendedViewExtension(OpenApiViewExtension):
    """A project's own view extension for a view with the mixin, as docs/openapi.rst
    gives it: it takes the place of IdempotencyViewExtension."""

    target_class = ExtendedView
    priority = IdempotencyViewExtension.priority + 1

    def view_replacement(self) -> type[APIView]:
        class Tagged(self.target):  # type: ignore[name-defined,misc]
            pass

        return extend_schema(tags=["from-extension"])(Tagged)


class LeaveOutExtension(OpenApiViewExtension):
    """The way docs/openapi.rst gives to leave a view out."""

    target_class = UndocumentedView
    priority = IdempotencyViewExtension.priority + 1

    def view_replacement(self) -> type[APIView]:
        return self.target  # type: ignore[no-any-return]


router = SimpleRouter()
router.register("orders", OrderViewSet, basename="order")
router.register("required", RequiredViewSet, basename="required")
router.register("optional", OptionalViewSet, basename="optional")
router.register("class-decorated", ClassDecoratedViewSet, basename="class-decorated")
router.register("method-schema", MethodSchemaViewSet, basename="method-schema")


class TagSchema(AutoSchema):
    """A schema class whose instance carries what its constructor was given."""

    def __init__(self, tags: list[str] | None = None) -> None:
        super().__init__()
        self.fixed_tags = tags

    def get_tags(self) -> list[str]:
        return self.fixed_tags or super().get_tags()


class TaggedView(IdempotencyMixin, generics.CreateAPIView):
    queryset = Order.objects.all()
    serializer_class = OrderSerializer
    schema = TagSchema(tags=["payments"])


urlpatterns = [
    path("tagged/", TaggedView.as_view()),
    path("", include(router.urls)),
    path("exempt/", ExemptView.as_view()),
    path("declared/", DeclaredView.as_view()),
    path("range/", RangeView.as_view()),
    path("own-schema/", OwnSchemaView.as_view()),
    path("key-from-body/", KeyFromBodyView.as_view()),
    path("own-key-parameter/", OwnKeyParameterView.as_view()),
    path("hidden-key/", HiddenKeyView.as_view()),
    path("middleware/", MiddlewareView.as_view()),
    path("middleware-schema/", MiddlewareSchemaView.as_view()),
    path("plain/", PlainView.as_view()),
    path("extended/", ExtendedView.as_view()),
    path("undocumented/", UndocumentedView.as_view()),
    path("shared-response/", SharedResponseView.as_view()),
]


# -- helpers ----------------------------------------------------------------------------


def generate() -> dict[str, Any]:
    """The schema of this module's urlconf, valid OpenAPI, generated without warnings."""
    schema: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    validate_schema(schema)
    assert not GENERATOR_STATS, "drf-spectacular warned; see the captured stderr"
    return schema


def operation(schema: dict[str, Any], url: str, method: str) -> dict[str, Any]:
    result: dict[str, Any] = schema["paths"][url][method]
    return result


def key_parameter(op: dict[str, Any], name: str = KEY) -> dict[str, Any] | None:
    found = [p for p in op.get("parameters", []) if p["in"] == "header" and p["name"] == name]
    assert len(found) <= 1, found
    return found[0] if found else None


def problem_statuses(op: dict[str, Any]) -> list[str]:
    return [status for status, r in op["responses"].items() if PROBLEM in r.get("content", {})]


def codes(op: dict[str, Any], status: str) -> list[str]:
    schema = op["responses"][status]["content"][PROBLEM]["schema"]
    ref, narrowed = schema["allOf"]
    assert ref == {"$ref": f"#/components/schemas/{PROBLEM_COMPONENT}"}
    assert narrowed["properties"]["status"]["enum"] == [int(status)]
    result: list[str] = narrowed["properties"]["code"]["enum"]
    return result


# -- the key header ---------------------------------------------------------------------


def test_key_header_on_unsafe_operations_optional_by_default() -> None:
    schema = generate()
    for url, method in [
        ("/orders/", "post"),
        ("/orders/{id}/", "put"),
        ("/orders/{id}/", "patch"),
        ("/orders/{id}/", "delete"),
        ("/orders/{id}/ship/", "post"),
    ]:
        parameter = key_parameter(operation(schema, url, method))
        assert parameter is not None, (url, method)
        assert parameter["schema"] == {
            "type": "string",
            "minLength": 1,
            "maxLength": 512,
            "pattern": key_pattern(255),
        }
        assert not parameter.get("required", False), (url, method)
        assert "safe to retry" in parameter["description"]


def test_no_key_header_or_problems_on_safe_operations() -> None:
    schema = generate()
    for url in ("/orders/", "/orders/{id}/"):
        op = operation(schema, url, "get")
        assert key_parameter(op) is None
        assert problem_statuses(op) == []
        assert REPLAYED not in op["responses"]["200"].get("headers", {})


def test_required_by_the_view() -> None:
    op = operation(generate(), "/required/", "post")
    parameter = key_parameter(op)
    assert parameter is not None and parameter["required"] is True
    assert codes(op, "400") == ["idempotency_key_missing", "idempotency_key_invalid"]


def test_required_by_the_setting(settings: Any) -> None:
    settings.IDEMPOTENCY = {"REQUIRED": True}
    schema = generate()
    op = operation(schema, "/orders/", "post")
    parameter = key_parameter(op)
    assert parameter is not None and parameter["required"] is True
    assert codes(op, "400") == ["idempotency_key_missing", "idempotency_key_invalid"]
    # The view's idempotency_required = False wins over the setting.
    optional = operation(schema, "/optional/", "post")
    parameter = key_parameter(optional)
    assert parameter is not None and not parameter.get("required", False)
    assert codes(optional, "400") == ["idempotency_key_invalid"]


def test_header_setting_names_the_parameter(settings: Any) -> None:
    settings.IDEMPOTENCY = {"HEADER": "X-Retry-Key", "MAX_KEY_LENGTH": 64}
    op = operation(generate(), "/orders/", "post")
    assert key_parameter(op) is None
    parameter = key_parameter(op, "X-Retry-Key")
    assert parameter is not None
    assert "At most 64 printable ASCII characters" in parameter["description"]
    assert parameter["schema"]["maxLength"] == 130
    assert parameter["schema"]["pattern"] == key_pattern(64)
    assert matches(parameter["schema"], "k" * 64)
    assert not matches(parameter["schema"], "k" * 65)


def test_methods_setting(settings: Any) -> None:
    settings.IDEMPOTENCY = {"METHODS": ["POST"]}
    schema = generate()
    assert key_parameter(operation(schema, "/orders/", "post")) is not None
    for method in ("put", "patch", "delete"):
        op = operation(schema, "/orders/{id}/", method)
        assert key_parameter(op) is None, method
        assert problem_statuses(op) == [], method


def test_exempt_view_and_exempt_action() -> None:
    schema = generate()
    for op in (
        operation(schema, "/exempt/", "post"),
        operation(schema, "/orders/{id}/touch/", "post"),
    ):
        assert key_parameter(op) is None
        assert problem_statuses(op) == []
        assert all(REPLAYED not in r.get("headers", {}) for r in op["responses"].values())


def test_key_from_a_key_func_has_no_header_but_its_problems() -> None:
    op = operation(generate(), "/key-from-body/", "post")
    assert key_parameter(op) is None
    assert codes(op, "400") == ["idempotency_key_missing", "idempotency_key_invalid"]
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]


def test_header_excluded_by_extend_schema_stays_out() -> None:
    op = operation(generate(), "/hidden-key/", "post")
    assert key_parameter(op) is None
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]


def test_own_key_parameter_is_not_doubled() -> None:
    op = operation(generate(), "/own-key-parameter/", "post")
    parameter = key_parameter(op)  # asserts there is at most one
    assert parameter is not None and parameter["required"] is True


# -- what the key header accepts --------------------------------------------------------

#: Printable ASCII, with the characters the parser treats specially drawn more often.
PRINTABLE = st.one_of(
    st.sampled_from(' ",\\;k'), st.characters(min_codepoint=0x20, max_codepoint=0x7E)
)


def key_schema(max_length: int) -> dict[str, Any]:
    parameter = idempotency_key_parameter().type
    assert isinstance(parameter, dict)
    assert parameter["pattern"] == key_pattern(max_length)
    return parameter


def matches(schema: dict[str, Any], value: Any) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def accepts(value: str, max_length: int) -> bool:
    try:
        parse_header(value, max_length)
    except InvalidKey:
        return False
    return True


@hypothesis_settings(max_examples=300, deadline=None, derandomize=True)
@given(st.from_regex(key_pattern(8), fullmatch=True))
def test_values_of_the_pattern_are_accepted(value: str) -> None:
    key = parse_header(value, 8)
    assert 1 <= len(key) <= 8
    assert len(value) <= 2 * 8 + 2


@hypothesis_settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.from_regex(key_pattern(255), fullmatch=True))
def test_values_of_the_default_schema_are_accepted(value: str) -> None:
    assert matches(key_schema(255), value)
    assert 1 <= len(parse_header(value, 255)) <= 255


@hypothesis_settings(max_examples=1000, deadline=None, derandomize=True)
@given(st.text(PRINTABLE, min_size=0, max_size=22))
@example('"' + "\\\\" * 8 + '"')
@example('"' + "k" * 9 + '"')
@example("k" * 9)
@example('"a\\"')
@example('a"b')
def test_the_pattern_is_the_parser(value: str) -> None:
    """Without the spaces HTTP strips around a field value, the pattern and
    parse_header agree on every printable ASCII value."""
    pattern = re.compile(key_pattern(8))
    if pattern.fullmatch(value):
        assert accepts(value, 8), value
    if value == value.strip(" "):
        assert bool(pattern.fullmatch(value)) == accepts(value, 8), value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a,b",
        "a, b",
        '"a", "b"',
        "cl\u00e9",
        '"cl\u00e9"',
        "k" * 256,
        '"' + "k" * 256 + '"',
        '"' + "\\\\" * 256 + '"',
        '""',
        '"abc',
        '"a\\"',
        '"a\\b"',
        '"a"b',
        '"a";p=1',
        "a\tb",
        "a\x7fb",
        "a\nb",
    ],
)
def test_refused_values_do_not_match(value: str) -> None:
    assert not accepts(value, 255)
    assert not matches(key_schema(255), value)


@pytest.mark.parametrize(
    "value",
    ["k", "k" * 255, 'a"b', "a b", '"a,b"', '"a\\"b"', '" "', '"' + "\\\\" * 255 + '"'],
)
def test_accepted_values_match(value: str) -> None:
    assert accepts(value, 255)
    assert matches(key_schema(255), value)


def test_a_key_of_one_character(settings: Any) -> None:
    settings.IDEMPOTENCY = {"MAX_KEY_LENGTH": 1}
    schema = key_schema(1)
    assert schema["maxLength"] == 4
    for value in ("k", '"k"', '","', '"\\\\"'):
        assert accepts(value, 1) and matches(schema, value), value
    for value in ("kk", '"kk"', '"', ","):
        assert not accepts(value, 1) and not matches(schema, value), value


# -- problem responses ------------------------------------------------------------------


def test_problem_responses_and_codes() -> None:
    op = operation(generate(), "/orders/", "post")
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]
    assert codes(op, "400") == ["idempotency_key_invalid"]
    assert codes(op, "409") == ["idempotency_key_mismatch", "idempotency_key_locked"]
    assert codes(op, "413") == ["idempotency_request_too_large"]
    assert codes(op, "500") == [
        "idempotency_response_too_large",
        "idempotency_response_not_kept",
    ]
    assert codes(op, "503") == ["idempotency_store_unavailable"]
    for status in ("400", "409", "413", "500", "503"):
        assert list(op["responses"][status]["content"]) == [PROBLEM]
        assert "`idempotency_" in op["responses"][status]["description"]


def test_problem_component() -> None:
    component = generate()["components"]["schemas"][PROBLEM_COMPONENT]
    assert component["type"] == "object"
    assert list(component["properties"]) == ["type", "title", "status", "detail", "code"]
    assert component["required"] == ["type", "title", "status", "detail", "code"]
    assert component["properties"]["status"]["type"] == "integer"
    assert component["properties"]["type"]["format"] == "uri-reference"
    for code in ALL_CODES:
        assert f"`{code}`" in component["properties"]["code"]["description"]


def test_retry_after_on_409_and_503_only() -> None:
    op = operation(generate(), "/orders/", "post")
    for status in ("409", "503"):
        header = op["responses"][status]["headers"]["Retry-After"]
        assert header["schema"] == {"type": "integer", "minimum": 0}
    for status in ("400", "413"):
        assert "Retry-After" not in op["responses"][status].get("headers", {})


def test_mismatch_status_422(settings: Any) -> None:
    settings.IDEMPOTENCY = {"MISMATCH_STATUS": 422}
    op = operation(generate(), "/orders/", "post")
    assert problem_statuses(op) == ["400", "409", "413", "422", "500", "503"]
    assert codes(op, "422") == ["idempotency_key_mismatch"]
    assert codes(op, "409") == ["idempotency_key_locked"]
    assert "Retry-After" not in op["responses"]["422"].get("headers", {})
    assert "Retry-After" in op["responses"]["409"]["headers"]


def test_mismatch_status_400_shares_the_400(settings: Any) -> None:
    settings.IDEMPOTENCY = {"MISMATCH_STATUS": 400}
    op = operation(generate(), "/orders/", "post")
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]
    assert codes(op, "400") == ["idempotency_key_invalid", "idempotency_key_mismatch"]
    assert codes(op, "409") == ["idempotency_key_locked"]


# -- replays ----------------------------------------------------------------------------


def test_replayed_header_on_the_views_responses() -> None:
    schema = generate()
    created = operation(schema, "/orders/", "post")["responses"]["201"]
    header = created["headers"][REPLAYED]
    assert header["schema"] == {"type": "string", "enum": ["true"]}
    assert REPLAYED in operation(schema, "/orders/{id}/", "put")["responses"]["200"]["headers"]
    assert REPLAYED in operation(schema, "/orders/{id}/", "delete")["responses"]["204"]["headers"]
    # The app's own problems are never replays.
    for status in ("400", "409", "413", "500", "503"):
        responses = operation(schema, "/orders/", "post")["responses"]
        assert REPLAYED not in responses[status].get("headers", {})


# -- the view's own schema is kept ------------------------------------------------------


def test_views_own_responses_and_parameters_are_kept() -> None:
    op = operation(generate(), "/declared/", "post")
    responses = op["responses"]
    assert responses["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Order"
    }
    # Its 400 keeps its body and description and gains the problem body.
    assert responses["400"]["description"] == "Invalid order."
    assert responses["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationError"
    }
    assert codes(op, "400") == ["idempotency_key_invalid"]
    # Its 409 keeps its description and gains the problem body and Retry-After.
    assert responses["409"]["description"] == "Out of stock."
    assert codes(op, "409") == ["idempotency_key_mismatch", "idempotency_key_locked"]
    assert "Retry-After" in responses["409"]["headers"]
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]
    assert list(responses) == ["201", "400", "409", "413", "429", "500", "503"]
    # Replays: the view's storable responses only; a 429 is never stored.
    assert REPLAYED in responses["201"]["headers"]
    assert REPLAYED in responses["400"]["headers"]
    assert REPLAYED not in responses["429"].get("headers", {})
    assert key_parameter(op, "X-Request-Id") is not None
    assert key_parameter(op) is not None


def test_a_range_response_is_kept_for_the_statuses_it_covers() -> None:
    """An exact 400 would take the place of the view's 4XX for a 400: it says what the
    4XX says, and the problem body beside it."""
    op = operation(generate(), "/range/", "post")
    responses = op["responses"]
    error = {"$ref": "#/components/schemas/ValidationError"}
    for status in ("400", "409", "413"):
        content = responses[status]["content"]
        assert list(content) == ["application/json", PROBLEM], status
        assert content["application/json"]["schema"] == error
        assert responses[status]["description"].startswith("Client error. `idempotency_")
        assert REPLAYED in responses[status]["headers"]
    assert codes(op, "409") == ["idempotency_key_mismatch", "idempotency_key_locked"]
    assert "Retry-After" in responses["409"]["headers"]
    assert list(responses["4XX"]["content"]) == ["application/json"]
    # No range or default covers a 503: the problem alone.
    assert list(responses["503"]["content"]) == [PROBLEM]
    assert list(responses) == ["201", "400", "409", "413", "500", "503", "4XX"]


def test_class_level_extend_schema_is_kept() -> None:
    schema = generate()
    create = operation(schema, "/class-decorated/", "post")
    assert create["tags"] == ["tagged-class"]
    assert create["summary"] == "Create, from extend_schema_view"
    assert key_parameter(create) is not None
    assert problem_statuses(create) == ["400", "409", "413", "500", "503"]
    update = operation(schema, "/class-decorated/{id}/", "put")
    assert update["tags"] == ["tagged-class"]
    assert key_parameter(update) is not None
    assert operation(schema, "/class-decorated/", "get")["tags"] == ["tagged-class"]


def test_own_autoschema_subclass_and_method_extend_schema() -> None:
    op = operation(generate(), "/own-schema/", "post")
    assert op["tags"] == ["own-schema"]
    assert op["summary"] == "Create with an own schema"
    assert key_parameter(op) is not None
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]
    assert (
        op["description"] == "Its own AutoSchema subclass, and an @extend_schema on the method too."
    )


def test_a_shared_response_is_left_alone() -> None:
    schema = generate()
    op = operation(schema, "/shared-response/", "post")
    assert op["responses"]["409"] == {"$ref": "#/components/responses/Conflict"}
    assert schema["components"]["responses"]["Conflict"] == {
        "description": "A shared conflict response."
    }
    assert problem_statuses(op) == ["400", "413", "500", "503"]
    assert REPLAYED in op["responses"]["201"]["headers"]


def callback(url: str) -> Any:
    (found,) = [p.callback for p in urlpatterns if str(p.pattern) == url]
    return found


def test_replacement_points_at_the_views_source() -> None:
    replacement = type(SchemaGenerator().create_view(callback("tagged/"), "POST"))
    assert replacement is not TaggedView and issubclass(replacement, TaggedView)
    assert replacement.__name__ == replacement.__qualname__ == "TaggedView"
    assert inspect.getsourcefile(replacement) == __file__
    assert replacement.schema is not TaggedView.schema


def test_a_view_whose_schema_has_the_mixin_is_not_replaced() -> None:
    assert type(SchemaGenerator().create_view(callback("hidden-key/"), "POST")) is HiddenKeyView
    assert type(SchemaGenerator().create_view(callback("own-schema/"), "POST")) is OwnSchemaView


def test_a_method_schema_needs_the_mixin_on_the_view() -> None:
    """drf-spectacular builds the operation of a method with its own schema class from
    that class and the view's: the extension's schema is not among them."""
    schema = generate()
    create = operation(schema, "/method-schema/", "post")
    assert create["summary"] == "Create, with a schema class of its own"
    assert key_parameter(create) is None
    assert problem_statuses(create) == []
    # The view's other operations are the view's schema's.
    update = operation(schema, "/method-schema/{id}/", "put")
    assert key_parameter(update) is not None
    assert problem_statuses(update) == ["400", "409", "413", "500", "503"]


def test_default_schema_class(settings: Any) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_SCHEMA_CLASS": "idempotency.openapi.IdempotencyAutoSchema",
    }
    schema = generate()
    op = operation(schema, "/orders/", "post")
    assert key_parameter(op) is not None
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]
    assert codes(op, "400") == ["idempotency_key_invalid"]
    # Views without the mixin are left as drf-spectacular builds them.
    plain = operation(schema, "/plain/", "post")
    assert key_parameter(plain) is None
    assert problem_statuses(plain) == []
    assert REPLAYED not in plain["responses"]["201"].get("headers", {})


def test_another_view_extension_is_kept() -> None:
    op = operation(generate(), "/extended/", "post")
    assert op["tags"] == ["from-extension"]
    assert key_parameter(op) is not None
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]


def test_a_higher_priority_extension_leaves_a_view_out() -> None:
    op = operation(generate(), "/undocumented/", "post")
    assert key_parameter(op) is None
    assert problem_statuses(op) == []
    assert REPLAYED not in op["responses"]["201"].get("headers", {})


def test_view_classes_are_left_as_they_were() -> None:
    generate()
    assert not isinstance(OrderViewSet.schema, IdempotencySchemaMixin)
    assert type(TaggedView.schema) is TagSchema
    assert TaggedView.schema.fixed_tags == ["payments"]
    method_schema = DeclaredView.post.kwargs["schema"]  # type: ignore[attr-defined]
    assert not issubclass(method_schema, IdempotencySchemaMixin)


# -- views without the mixin ------------------------------------------------------------


def test_helper_for_views_without_the_mixin() -> None:
    schema = generate()
    op = operation(schema, "/middleware/", "post")
    assert key_parameter(op) == key_parameter(operation(schema, "/orders/", "post"))
    # The helper adds the header only; nothing else is added without the mixin.
    assert problem_statuses(op) == []
    assert REPLAYED not in op["responses"]["201"].get("headers", {})
    assert key_parameter(operation(schema, "/plain/", "post")) is None


def test_schema_mixin_for_views_without_the_mixin(settings: Any) -> None:
    settings.IDEMPOTENCY = {"REQUIRED": True}
    schema = generate()
    op = operation(schema, "/middleware-schema/", "post")
    assert key_parameter(op) == key_parameter(operation(schema, "/orders/", "post"))
    parameter = key_parameter(op)
    assert parameter is not None and parameter["required"] is True
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]
    assert codes(op, "400") == ["idempotency_key_missing", "idempotency_key_invalid"]
    assert REPLAYED in op["responses"]["201"]["headers"]
    assert problem_statuses(operation(schema, "/plain/", "post")) == []


def test_helper_follows_the_settings(settings: Any) -> None:
    settings.IDEMPOTENCY = {"HEADER": "X-Retry-Key", "REQUIRED": True}
    parameter = idempotency_key_parameter()
    assert parameter.name == "X-Retry-Key"
    assert parameter.location == OpenApiParameter.HEADER
    assert parameter.required is True
    assert idempotency_key_parameter(required=False).required is False


# -- the testproject --------------------------------------------------------------------


@pytest.mark.urls("testproject.urls")
def test_testproject_schema_command(tmp_path: Path) -> None:
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--file", str(target), "--validate")
    schema = yaml.safe_load(target.read_text())
    op = schema["paths"]["/api/orders/"]["post"]
    parameter = key_parameter(op)
    assert parameter is not None and not parameter.get("required", False)
    assert problem_statuses(op) == ["400", "409", "413", "500", "503"]
    assert REPLAYED in op["responses"]["201"]["headers"]
    # Plain Django views (the payments and the webhook) are not in a DRF schema.
    assert not any(p.startswith(("/payments", "/webhooks")) for p in schema["paths"])

    documented = docs_yaml()
    assert documented["paths"]["/api/orders/"]["post"] == op
    assert documented["components"]["schemas"] == {
        PROBLEM_COMPONENT: schema["components"]["schemas"][PROBLEM_COMPONENT]
    }


def docs_yaml() -> dict[str, Any]:
    """The YAML block of docs/openapi.rst."""
    text = (ROOT / "docs" / "openapi.rst").read_text()
    block = text.split(".. code-block:: yaml\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("   "):
            break
        lines.append(line)
    loaded: dict[str, Any] = yaml.safe_load(textwrap.dedent("\n".join(lines)))
    return loaded


@pytest.mark.urls("testproject.urls")
def test_testproject_serves_the_schema(client: Client) -> None:
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert key_parameter(schema["paths"]["/api/orders/"]["post"]) is not None
    assert PROBLEM_COMPONENT in schema["components"]["schemas"]


def shop_schema() -> dict[str, Any]:
    from testproject import urls

    schema: dict[str, Any] = SchemaGenerator(urlconf=urls).get_schema(request=None, public=True)
    validate_schema(schema)
    return schema


@pytest.mark.urls("testproject.urls")
def test_testproject_keeps_its_400_beside_the_problem() -> None:
    paths = shop_schema()["paths"]
    for url, method in [
        ("/api/orders/", "post"),
        ("/api/orders/{id}/", "put"),
        ("/api/orders/{id}/", "patch"),
        ("/api/uploads/", "post"),
    ]:
        op = paths[url][method]
        content = op["responses"]["400"]["content"]
        assert list(content) == ["application/json", PROBLEM], (url, method)
        assert codes(op, "400") == ["idempotency_key_invalid"]
        errors = content["application/json"]["schema"]
        assert matches(errors, {"item": ["This field may not be blank."]})
        assert matches(errors, {"detail": "JSON parse error - Expecting value"})
    # No body, nothing of DRF's to validate: the problem alone.
    assert list(paths["/api/orders/{id}/"]["delete"]["responses"]["400"]["content"]) == [PROBLEM]


@pytest.mark.urls("testproject.urls")
def test_testproject_documents_its_404s() -> None:
    paths = shop_schema()["paths"]
    for method in ("get", "put", "patch", "delete"):
        response = paths["/api/orders/{id}/"][method]["responses"]["404"]
        schema = response["content"]["application/json"]["schema"]
        assert matches(schema, {"detail": "No Order matches the given query."}), method
        assert "text/html" in response["content"]
    assert "404" not in paths["/api/orders/"]["post"]["responses"]
    assert "404" not in paths["/api/uploads/"]["post"]["responses"]


@pytest.mark.urls("testproject.urls")
def test_testproject_states_its_serializer_bounds() -> None:
    schema = shop_schema()
    order = schema["components"]["schemas"]["Order"]["properties"]
    assert order["quantity"]["minimum"] == 1
    assert order["quantity"]["maximum"] == 2**31 - 1
    assert (order["item"]["minLength"], order["item"]["maxLength"]) == (1, 100)
    assert "pattern" in order["item"]
    for good in ("12.50", "0.01", ".5", "99999999.99", 12.5, 1):
        assert matches(order["amount"], good), good
    for bad in ("", "-", ".", "0", "0.00", "-1", "1.234", "100000000", 0, -1.5, 1.234):
        assert not matches(order["amount"], bad), bad
    upload = schema["components"]["schemas"]["Upload"]["properties"]
    assert upload["file"]["format"] == "binary"
    assert (upload["name"]["maxLength"], upload["note"]["maxLength"]) == (255, 200)
    body = schema["paths"]["/api/uploads/"]["post"]["requestBody"]["content"]
    assert list(body) == ["multipart/form-data"]


@hypothesis_settings(max_examples=100, deadline=None, derandomize=True)
@given(
    item=st.from_regex(ORDER_PATTERNS["item"], fullmatch=True).filter(lambda s: len(s) <= 100),
    amount=st.from_regex(ORDER_PATTERNS["amount"], fullmatch=True),
)
def test_testproject_orders_of_the_schema_validate(item: str, amount: str) -> None:
    serializer = OrderSerializer(data={"item": item, "quantity": 1, "amount": amount})
    assert serializer.is_valid(), serializer.errors


# -- loading ----------------------------------------------------------------------------

BASE_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "idempotency"]


def run_setup(apps: list[str], blocked: tuple[str, ...] = ()) -> str:
    """Set Django up with ``apps`` in ``INSTALLED_APPS``, in a fresh interpreter where
    ``blocked`` modules cannot be imported."""
    script = textwrap.dedent(
        f"""
        import sys
        for name in {list(blocked)!r}:
            sys.modules[name] = None
        import django
        from django.conf import settings
        settings.configure(
            INSTALLED_APPS={apps!r},
            DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}},
        )
        django.setup()
        import idempotency.decorators, idempotency.middleware
        print("openapi" if "idempotency.openapi" in sys.modules else "no openapi")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_loaded_when_drf_spectacular_is_an_installed_app() -> None:
    assert run_setup([*BASE_APPS, "rest_framework", "drf_spectacular"]) == "openapi"


def test_not_loaded_when_drf_spectacular_is_only_importable() -> None:
    assert run_setup([*BASE_APPS, "rest_framework"]) == "no openapi"
    assert run_setup(BASE_APPS) == "no openapi"


def test_not_loaded_without_drf_spectacular() -> None:
    assert run_setup(BASE_APPS, ("drf_spectacular",)) == "no openapi"


def test_not_loaded_without_rest_framework() -> None:
    assert run_setup(BASE_APPS, ("rest_framework", "drf_spectacular")) == "no openapi"


def test_the_views_schema_instance_is_kept() -> None:
    op = operation(generate(), "/tagged/", "post")

    assert op["tags"] == ["payments"]
    assert any(p["name"] == "Idempotency-Key" for p in op["parameters"])
