from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from rest_framework.authtoken.models import Token

USERNAME = "demo"
PASSWORD = "demo"
TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{1,40}")


class Command(BaseCommand):
    help = (
        "Create or update the local demo superuser 'demo' (password 'demo') and its API "
        "token, then print a curl example. Runs only when DEBUG is on."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--token",
            help="Use this token value (up to 40 letters, digits, '.', '_', '~', '-') "
            "instead of a random one, so documentation can show a stable token.",
        )
        parser.add_argument(
            "--base-url",
            default="http://127.0.0.1:8000",
            help="Server address used in the printed curl example (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "setup_demo creates a superuser with a known password: it runs only with DEBUG on."
            )
        token_value: str | None = options["token"]
        if token_value is not None and not TOKEN_RE.fullmatch(token_value):
            raise CommandError("--token must be 1 to 40 letters, digits, '.', '_', '~' or '-'.")

        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(
                username=USERNAME, defaults={"email": "demo@example.com"}
            )
            user.is_staff = True
            user.is_superuser = True
            user.is_active = True
            user.set_password(PASSWORD)
            user.save()
            token = self._token(user, token_value)

        verb = "Created" if created else "Updated"
        self.stdout.write(
            self.style.SUCCESS(f"{verb} superuser '{USERNAME}' (password '{PASSWORD}').")
        )
        self.stdout.write(f"API token: {token.key}")
        base_url = options["base_url"].rstrip("/")
        self.stdout.write("\nCreate an order; send the same command again to get the replay:\n")
        self.stdout.write(
            f"curl -i -X POST {base_url}/api/orders/ \\\n"
            f'  -H "Authorization: Token {token.key}" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            '  -H "Idempotency-Key: demo-order-1" \\\n'
            """  -d '{"item": "book", "quantity": 1, "amount": "12.50"}'"""
        )

    def _token(self, user: Any, value: str | None) -> Token:
        if value is None:
            token, _ = Token.objects.get_or_create(user=user)
            return token
        if Token.objects.filter(key=value).exclude(user=user).exists():
            raise CommandError("That --token value already belongs to another user.")
        Token.objects.filter(user=user).exclude(key=value).delete()
        token, _ = Token.objects.get_or_create(user=user, key=value)
        return token
