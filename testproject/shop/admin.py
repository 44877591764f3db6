from django.contrib import admin

from shop.models import Order, Payment, Upload, WebhookEvent


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "item", "quantity", "amount", "created_at"]
    list_filter = ["created_at"]
    list_select_related = ["user"]
    search_fields = ["item", "user__username"]
    date_hierarchy = "created_at"


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["id", "amount", "currency", "reference", "created_at"]
    list_filter = ["currency", "created_at"]
    search_fields = ["reference"]
    date_hierarchy = "created_at"


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    list_display = ["event_id", "type", "received_at"]
    list_filter = ["type", "received_at"]
    search_fields = ["event_id", "type"]
    date_hierarchy = "received_at"


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "size", "sha256", "note", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["name", "sha256", "note"]
    date_hierarchy = "created_at"
