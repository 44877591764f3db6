from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the benchmark user and its API token (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--token", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        user, _ = get_user_model().objects.get_or_create(username="bench")
        Token.objects.filter(user=user).exclude(key=options["token"]).delete()
        Token.objects.get_or_create(user=user, defaults={"key": options["token"]})
