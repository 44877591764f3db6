"""The two endpoints, without any idempotency: each integration wraps these."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django import forms
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from rest_framework import authentication, generics, parsers, permissions, renderers, views
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from benchproject.catalog.models import Item
from benchproject.catalog.serializers import ItemSerializer


class ItemCreate(generics.CreateAPIView):
    """DRF: validate a serializer, insert one row, answer 201 with the item."""

    queryset = Item.objects.all()
    serializer_class = ItemSerializer
    authentication_classes = [authentication.TokenAuthentication]
    permission_classes = [permissions.IsAuthenticated]
    parser_classes = [parsers.JSONParser]
    renderer_classes = [renderers.JSONRenderer]

    def perform_create(self, serializer: BaseSerializer[Item]) -> None:
        serializer.save(owner=self.request.user)


class AuthProbe(views.APIView):
    """DRF's dispatch with ``ItemCreate``'s token authentication and permission, and
    nothing after them: a constant 201. Beside ``plain_probe``, what a request pays
    for being authenticated by DRF, the step that an integration replaying from a
    middleware, before DRF, skips."""

    authentication_classes = [authentication.TokenAuthentication]
    permission_classes = [permissions.IsAuthenticated]
    renderer_classes = [renderers.JSONRenderer]

    def post(self, request: Any) -> Response:
        return Response({"ok": True}, status=201)


@csrf_exempt
@require_POST
def plain_probe(request: HttpRequest) -> JsonResponse:
    """The same constant 201 from a plain Django view."""
    return JsonResponse({"ok": True}, status=201)


class ItemForm(forms.Form):
    """The serializer's validation, as a Django form."""

    name = forms.CharField(max_length=100)
    quantity = forms.IntegerField(min_value=1)
    price = forms.DecimalField(max_digits=10, decimal_places=2)

    def clean_price(self) -> Decimal:
        value: Decimal = self.cleaned_data["price"]
        if value <= 0:
            raise forms.ValidationError("Ensure this value is greater than 0.")
        return value


def item_json(item: Item) -> dict[str, Any]:
    return {
        "id": item.pk,
        "name": item.name,
        "quantity": item.quantity,
        "price": str(item.price),
        "created_at": item.created_at.isoformat(),
    }


@csrf_exempt
@require_POST
def create_item(request: HttpRequest) -> JsonResponse:
    """Plain Django: the same validation and the same INSERT, anonymous."""
    try:
        data = json.loads(request.body)
    except ValueError:
        return JsonResponse({"detail": "The body must be JSON."}, status=400)
    if not isinstance(data, dict):
        return JsonResponse({"detail": "The body must be a JSON object."}, status=400)
    form = ItemForm(data)
    if not form.is_valid():
        return JsonResponse(form.errors, status=400)
    item = Item.objects.create(**form.cleaned_data)
    return JsonResponse(item_json(item), status=201)


def ping(request: HttpRequest) -> HttpResponse:
    """Readiness probe: no database."""
    return HttpResponse("ok", content_type="text/plain")
