from __future__ import annotations

from django.conf import settings
from django.urls import path

from benchproject.catalog.integrations import views_for
from benchproject.catalog.views import AuthProbe, ping, plain_probe

drf_view, plain_view = views_for(settings.BENCH_INTEGRATION)

urlpatterns = [
    path("ping/", ping),
    path("api/items/", drf_view),
    # Never protected: only the baseline measures them (bench_http.PROBES).
    path("probe/drf/", AuthProbe.as_view()),
    path("probe/plain/", plain_probe),
    path("items/", plain_view),
]
