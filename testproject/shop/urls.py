from django.urls import include, path
from rest_framework.routers import DefaultRouter

from shop import views

router = DefaultRouter()
router.register("orders", views.OrderViewSet, basename="order")
router.register("uploads", views.UploadViewSet, basename="upload")

urlpatterns = [
    path("api/", include(router.urls)),
    path("payments/", views.create_payment, name="payment-create"),
    path("payments/<int:pk>/", views.payment_detail, name="payment-detail"),
    path("webhooks/events/", views.webhook, name="webhook-event"),
    path("uploads/", views.uploads, name="upload-create"),
]
