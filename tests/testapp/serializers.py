from __future__ import annotations

from rest_framework import serializers

from tests.testapp.models import Order


class OrderSerializer(serializers.ModelSerializer):
    quantity = serializers.IntegerField(min_value=1)

    class Meta:
        model = Order
        fields = ["id", "user", "item", "quantity", "amount", "created_at"]
        read_only_fields = ["id", "user", "created_at"]
