from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from tests.testapp.models import Payment


@csrf_exempt
@require_POST
def create_payment(request: HttpRequest) -> JsonResponse:
    """Create a payment from ``{"amount": "12.50", "currency": "EUR", "reference": "..."}``.

    No decorator: the middleware of the test settings protects it.
    """
    data = json.loads(request.body)
    payment = Payment.objects.create(
        amount=data["amount"], currency=data["currency"], reference=data.get("reference", "")
    )
    return JsonResponse({"id": payment.pk, "reference": payment.reference}, status=201)
