from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from benchproject.catalog.models import Item


class ItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = Item
        fields = ["id", "name", "quantity", "price", "created_at"]
        read_only_fields = ["id", "created_at"]

    def validate_quantity(self, value: int) -> int:
        if value < 1:
            raise serializers.ValidationError("Ensure this value is at least 1.")
        return value

    def validate_price(self, value: Decimal) -> Decimal:
        if value <= 0:
            raise serializers.ValidationError("Ensure this value is greater than 0.")
        return value
