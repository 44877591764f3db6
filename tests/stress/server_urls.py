"""The testproject's URLs, plus the views that only the stress suite needs."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from shop.models import Payment

from idempotency.decorators import idempotent

MAX_DELAY = 10.0  # seconds


def ping(request: HttpRequest) -> HttpResponse:
    """Readiness probe: answers without touching the database."""
    return HttpResponse("ok", content_type="text/plain")


def _payment_fields(request: HttpRequest) -> dict[str, Any] | None:
    try:
        data = json.loads(request.body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("reference"), str):
        return None
    return {"amount": "10.00", "currency": "EUR", "reference": data["reference"][:100]}


@csrf_exempt
@require_POST
def slow_payment(request: HttpRequest) -> JsonResponse:
    """Create a payment after sleeping ``delay`` seconds: a view that outlives its lease.

    The middleware protects it, as it does the testproject's payments view.
    """
    fields = _payment_fields(request)
    if fields is None:
        return JsonResponse({"error": "invalid"}, status=400)
    delay = json.loads(request.body).get("delay", 0)
    if isinstance(delay, int | float) and not isinstance(delay, bool):
        time.sleep(min(max(float(delay), 0.0), MAX_DELAY))
    payment = Payment.objects.create(**fields)
    return JsonResponse({"id": payment.pk, "reference": payment.reference}, status=201)


@csrf_exempt
@require_POST
async def async_payment(request: HttpRequest) -> JsonResponse:
    """An async view that creates a payment, for the ASGI run."""
    fields = _payment_fields(request)
    if fields is None:
        return JsonResponse({"error": "invalid"}, status=400)
    payment = await Payment.objects.acreate(**fields)
    return JsonResponse({"id": payment.pk, "reference": payment.reference}, status=201)


@csrf_exempt
@idempotent
def no_response(request: HttpRequest) -> Any:
    """A view with a bug: it writes, then returns None instead of a response."""
    fields = _payment_fields(request)
    if fields is not None:
        Payment.objects.create(**fields)
    return None


def worker(request: HttpRequest) -> HttpResponse:
    """Which worker process answered."""
    return JsonResponse({"pid": os.getpid()})


urlpatterns = [
    path("stress/ping/", ping),
    path("stress/no-response/", no_response),
    path("stress/worker/", worker),
    path("stress/slow-payments/", slow_payment),
    path("stress/async-payments/", async_payment),
    path("", include("testproject.urls")),
]
