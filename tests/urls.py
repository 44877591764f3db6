"""The URLs of the test settings: the admin, and a payments view the middleware protects.

Most test modules serve views of their own (``pytest.mark.urls(__name__)``); the tests
of the demo use ``testproject.urls``.
"""

from django.contrib import admin
from django.urls import path

from tests.testapp.views import create_payment

urlpatterns = [
    path("admin/", admin.site.urls),
    path("payments/", create_payment),
]
