"""PostgreSQL: the claim becomes one call of a function, ``idempotency_claim``.

The function inserts a running key and, when the key was already there, reads
its row: one round trip for a first request and one for a replay, where plain
statements need an INSERT and then a SELECT for one of the two. PL/pgSQL keeps
its statements prepared for the life of the server session, so they are not
parsed and planned again on every request (once ``plan_cache_mode = auto`` has
settled on a generic plan), whatever pooler sits in between.

The function is ``VOLATILE`` (the default): each of its statements then takes a
new snapshot under READ COMMITTED, and the read sees a conflicting row that
committed after the INSERT began. It runs with the privileges of the caller.
Other databases get nothing; the migration does nothing there, and reverses.

The function names the key table's columns itself, as ``store.py`` does: a later
migration that renames, drops or retypes one of them must replace the function
too (``CREATE OR REPLACE FUNCTION``, with the same signature).
"""

from typing import Any

from django.db import migrations

FUNCTION = "idempotency_claim"
SIGNATURE = f"{FUNCTION}(text, text, text, text, text, timestamptz, timestamptz, timestamptz)"

CREATE = f"""
CREATE FUNCTION {FUNCTION}(
    p_scope text, p_key text, p_fingerprint text, p_method text, p_path text,
    p_lease_expires_at timestamptz, p_now timestamptz, p_expires_at timestamptz
)
RETURNS TABLE (
    claimed_id bigint, found_fingerprint text, found_state text, found_fence bigint,
    lease_live boolean, expired boolean, found_status integer, found_headers jsonb,
    found_body bytea
)
LANGUAGE plpgsql
AS $$
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO idempotency_idempotencykey AS k (
        scope, key, fingerprint, method, path, state, fence,
        lease_expires_at, created_at, expires_at
    )
    VALUES (
        p_scope, p_key, p_fingerprint, p_method, p_path, 'running', 1,
        p_lease_expires_at, p_now, p_expires_at
    )
    ON CONFLICT (scope, key) DO NOTHING
    RETURNING k.id INTO new_id;
    IF new_id IS NOT NULL THEN
        -- Claimed: only the id; a NULL fingerprint tells the caller so.
        RETURN QUERY SELECT new_id, NULL::text, NULL::text, NULL::bigint, NULL::boolean,
            NULL::boolean, NULL::integer, NULL::jsonb, NULL::bytea;
        RETURN;
    END IF;
    -- No row when the one that conflicted has gone since (purged, or rolled back).
    RETURN QUERY SELECT k.id, k.fingerprint::text, k.state::text, k.fence,
        (k.lease_expires_at IS NOT NULL AND k.lease_expires_at > p_now),
        (k.expires_at <= p_now), k.response_status::integer, k.response_headers,
        k.response_body
    FROM idempotency_idempotencykey k
    WHERE k.scope = p_scope AND k.key = p_key;
END
$$
"""


def create_function(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop_function(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP FUNCTION {SIGNATURE}")


class Migration(migrations.Migration):
    dependencies = [
        ("idempotency", "0005_response_in_key_row"),
    ]

    operations = [
        migrations.RunPython(create_function, drop_function, elidable=False),
    ]
