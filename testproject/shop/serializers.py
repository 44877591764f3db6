from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from shop.models import Order, Upload


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ["id", "user", "item", "quantity", "amount", "created_at"]
        read_only_fields = ["id", "user", "created_at"]

    def validate_quantity(self, value: int) -> int:
        if value < 1:
            raise serializers.ValidationError("Ensure this value is at least 1.")
        return value

    def validate_amount(self, value: Decimal) -> Decimal:
        if value <= 0:
            raise serializers.ValidationError("Ensure this value is greater than 0.")
        return value


class UploadSerializer(serializers.ModelSerializer):
    file = serializers.FileField(write_only=True)

    class Meta:
        model = Upload
        fields = ["id", "name", "size", "sha256", "note", "file"]
        read_only_fields = ["id", "size", "sha256"]
        extra_kwargs = {"name": {"required": False}}

    def create(self, validated_data: dict[str, Any]) -> Upload:
        upload = validated_data.pop("file")
        size, sha256 = Upload.measure(upload.chunks())
        validated_data.setdefault("name", (upload.name or "")[:255])
        saved: Upload = Upload.objects.create(size=size, sha256=sha256, **validated_data)
        return saved
