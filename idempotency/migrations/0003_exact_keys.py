"""Keys and scopes compare byte for byte on MariaDB and MySQL too.

On those servers the columns move to a binary ``NO PAD`` collation (see
``idempotency.models.exact_collation``), whatever the server's default. Elsewhere
the database already compares them exactly and nothing is run: the operations only
change the field class in the migration state (on SQLite, a plain ``AlterField``
would rebuild the table for nothing).
"""

from typing import Any

from django.db import migrations

import idempotency.models


class AlterFieldOnMySQL(migrations.AlterField):
    """``AlterField`` that runs SQL on MariaDB and MySQL only."""

    def database_forwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "mysql":
            super().database_forwards(app_label, schema_editor, *args)

    def database_backwards(self, app_label: str, schema_editor: Any, *args: Any) -> None:
        if schema_editor.connection.vendor == "mysql":
            super().database_backwards(app_label, schema_editor, *args)


class Migration(migrations.Migration):
    dependencies = [
        ("idempotency", "0002_remove_replay_count"),
    ]

    operations = [
        AlterFieldOnMySQL(
            model_name="idempotencykey",
            name="key",
            field=idempotency.models.ExactCharField(
                help_text="The key as the client sent it.", max_length=255, verbose_name="key"
            ),
        ),
        AlterFieldOnMySQL(
            model_name="idempotencykey",
            name="scope",
            field=idempotency.models.ExactCharField(max_length=255, verbose_name="scope"),
        ),
    ]
