from __future__ import annotations

from django.conf import settings
from django.urls import path

from benchproject.catalog.integrations import views_for
from benchproject.catalog.views import OpenItemCreate, ping

drf_view, plain_view = views_for(settings.BENCH_INTEGRATION)

urlpatterns = [
    path("ping/", ping),
    path("api/items/", drf_view),
    # Never protected: only the baseline measures it (bench_http.DRF_OPEN).
    path("api/items/open/", OpenItemCreate.as_view()),
    path("items/", plain_view),
]
