"""The stored response moves into the key's row; ``IdempotencyResponse`` becomes a view.

A first request then costs one UPDATE to complete (no second row, no second index
entry), a replay one read of one row, a purge one DELETE. The old responses are
copied into their keys' rows before their table is dropped; the migration reverses,
copying them back.

A later migration that alters ``idempotency_idempotencykey`` must drop the view
before and create it again after (``RunPython(drop_view, create_view)`` and the
reverse, around its operations): SQLite rebuilds a table to alter it, and refuses
to rename the rebuilt table while a view names the old one.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

KEYS = "idempotency_idempotencykey"
RESPONSES = "idempotency_idempotencyresponse"
MOVED = (("status", "response_status"), ("headers", "response_headers"), ("body", "response_body"))


def copy_into_keys(apps: Any, schema_editor: Any) -> None:
    q = schema_editor.quote_name
    kt, rt, kid, rkey = q(KEYS), q(RESPONSES), q("id"), q("key_id")
    sets = ", ".join(
        f"{q(new)} = (SELECT r.{q(old)} FROM {rt} r WHERE r.{rkey} = {kt}.{kid})"
        for old, new in MOVED
    )
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"UPDATE {kt} SET {sets} WHERE {kid} IN (SELECT {rkey} FROM {rt})")


def copy_back(apps: Any, schema_editor: Any) -> None:
    q = schema_editor.quote_name
    olds = ", ".join(q(old) for old, _ in MOVED)
    news = ", ".join(q(new) for _, new in MOVED)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {q(RESPONSES)} ({q('key_id')}, {olds}) "
            f"SELECT {q('id')}, {news} FROM {q(KEYS)} WHERE {q('response_status')} IS NOT NULL"
        )


def create_view(apps: Any, schema_editor: Any) -> None:
    q = schema_editor.quote_name
    columns = ", ".join(f"{q(new)} AS {q(old)}" for old, new in MOVED)
    schema_editor.execute(
        f"CREATE VIEW {q(RESPONSES)} AS SELECT {q('id')} AS {q('key_id')}, {columns} "
        f"FROM {q(KEYS)} WHERE {q('response_status')} IS NOT NULL"
    )


def drop_view(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute(f"DROP VIEW {schema_editor.quote_name(RESPONSES)}")


class Migration(migrations.Migration):
    dependencies = [
        ("idempotency", "0004_outgoing_operations"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotencykey",
            name="response_status",
            field=models.PositiveSmallIntegerField(
                blank=True, null=True, verbose_name="response status"
            ),
        ),
        migrations.AddField(
            model_name="idempotencykey",
            name="response_headers",
            field=models.JSONField(
                blank=True,
                help_text="[name, value] pairs.",
                null=True,
                verbose_name="response headers",
            ),
        ),
        migrations.AddField(
            model_name="idempotencykey",
            name="response_body",
            field=models.BinaryField(blank=True, null=True, verbose_name="response body"),
        ),
        migrations.RunPython(copy_into_keys, copy_back),
        migrations.DeleteModel(name="IdempotencyResponse"),
        migrations.CreateModel(
            name="IdempotencyResponse",
            fields=[
                (
                    "idempotency_key",
                    models.OneToOneField(
                        db_column="key_id",
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        primary_key=True,
                        related_name="response",
                        serialize=False,
                        to="idempotency.idempotencykey",
                        verbose_name="idempotency key",
                    ),
                ),
                ("status", models.PositiveSmallIntegerField(verbose_name="status")),
                (
                    "headers",
                    models.JSONField(
                        default=list, help_text="[name, value] pairs.", verbose_name="headers"
                    ),
                ),
                ("body", models.BinaryField(blank=True, verbose_name="body")),
            ],
            options={
                "verbose_name": "stored response",
                "verbose_name_plural": "stored responses",
                "db_table": RESPONSES,
                "managed": False,
            },
        ),
        # DDL: not wrapped in a transaction of its own where DDL cannot roll back
        # (MariaDB, MySQL); on SQLite and PostgreSQL the migration is one transaction.
        migrations.RunPython(create_view, drop_view, atomic=False),
    ]
