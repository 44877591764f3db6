from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from shop.models import Order, Upload

try:
    from drf_spectacular.utils import extend_schema_field
except ImportError:  # drf-spectacular is optional: without it there is no schema to annotate

    def extend_schema_field(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        return lambda field: field


#: What the fields below accept, for the schema (the validation says the same in Python).
ITEM_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"
AMOUNT_PATTERN = r"^(?:[1-9][0-9]{0,7}(?:\.[0-9]{1,2})?|0?\.(?:0[1-9]|[1-9][0-9]?))$"
MAX_QUANTITY = 2**31 - 1  # a PositiveIntegerField on every database


@extend_schema_field({"type": "string", "minLength": 1, "maxLength": 100, "pattern": ITEM_PATTERN})
class ItemField(serializers.CharField):
    """Up to 100 characters, not all of them spaces, without NUL; kept as sent."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_length=100, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        value: str = super().to_internal_value(data)
        if not value.strip():
            self.fail("blank")
        return value


@extend_schema_field(
    {
        "anyOf": [
            {"type": "string", "format": "decimal", "pattern": AMOUNT_PATTERN},
            {"type": "number", "minimum": 0.01, "maximum": 99999999.99, "multipleOf": 0.01},
        ],
        "example": "12.50",
    }
)
class AmountField(serializers.DecimalField):
    """A positive amount with at most 2 decimal places, below 100000000."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_digits=10, decimal_places=2, **kwargs)

    def validate_precision(self, value: Decimal) -> Decimal:
        value = super().validate_precision(value)
        if value <= 0:
            raise serializers.ValidationError("Ensure this value is greater than 0.")
        return value


class OrderSerializer(serializers.ModelSerializer):
    item = ItemField()
    quantity = serializers.IntegerField(
        min_value=1,
        max_value=MAX_QUANTITY,
        error_messages={"min_value": "Ensure this value is at least 1."},
    )
    amount = AmountField()

    class Meta:
        model = Order
        fields = ["id", "user", "item", "quantity", "amount", "created_at"]
        read_only_fields = ["id", "user", "created_at"]


@extend_schema_field({"type": "string", "format": "binary", "minLength": 1})
class UploadFileField(serializers.FileField):
    """A file part of a multipart body (drf-spectacular says ``uri`` for a FileField).

    DRF refuses an empty file ("The submitted file is empty."): ``minLength`` says so.
    """


class UploadSerializer(serializers.ModelSerializer):
    file = UploadFileField(write_only=True)

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
