"""The admin of idempotency keys, through the real admin URLs (``tests/urls.py``)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from pytest_django.asserts import assertContains, assertNotContains

from idempotency.admin import BODY_PREVIEW_BYTES, KEY_DISPLAY_CHARS, body_context
from idempotency.models import IdempotencyKey, IdempotencyResponse
from tests.testapp.models import Payment

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:idempotency_idempotencykey_changelist")
ADD = reverse("admin:idempotency_idempotencykey_add")
COMPLETED = IdempotencyKey.State.COMPLETED
RUNNING = IdempotencyKey.State.RUNNING
RELEASED = IdempotencyKey.State.RELEASED
JSON_HEADERS = [["Content-Type", "application/json"]]
JSON_HEADERS_TUPLES = [("Content-Type", "application/json")]
NBSP = "\xa0"


def make_key(
    key: str,
    *,
    scope: str = "anonymous",
    method: str = "POST",
    path: str = "/payments/",
    state: str = COMPLETED,
    created_at: datetime | None = None,
    expires_in: timedelta = timedelta(hours=1),
    lease_in: timedelta | None = None,
    status: int | None = 201,
    headers: list[list[str]] | None = None,
    body: bytes = b'{"id": 1}',
) -> IdempotencyKey:
    now = timezone.now()
    row = IdempotencyKey.objects.create(
        scope=scope,
        key=key,
        fingerprint="f" * 64,
        method=method,
        path=path,
        state=state,
        fence=1,
        lease_expires_at=now + lease_in if lease_in is not None else None,
        created_at=created_at or now,
        completed_at=now if state == COMPLETED else None,
        expires_at=now + expires_in,
    )
    if status is not None:
        row.response_status = status
        row.response_headers = JSON_HEADERS if headers is None else headers
        row.response_body = body
        row.save(update_fields=["response_status", "response_headers", "response_body"])
    return row


def change_url(key: IdempotencyKey) -> str:
    return reverse("admin:idempotency_idempotencykey_change", args=[key.pk])


def listed(client: Client, **params: Any) -> set[str]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200
    return {key.key for key in response.context["cl"].result_list}


def messages_of(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def run_action(client: Client, action: str, keys: list[IdempotencyKey], **extra: str) -> Any:
    data = {"action": action, "index": "0", ACTION_CHECKBOX_NAME: [k.pk for k in keys], **extra}
    return client.post(CHANGELIST, data, follow=True)


def staff(django_user_model: Any, username: str, *codenames: str) -> Any:
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="idempotency", codename=codename)
        )
    return user


# -- changelist ---------------------------------------------------------------------------


def test_changelist_shows_every_column(admin_client: Client, django_user_model: Any) -> None:
    alice = django_user_model.objects.create_user("alice")
    make_key("k-user", scope=f"user:{alice.pk}", status=201)
    long_scope = "authorization:" + "a" * 64
    make_key("k-token", scope=long_scope, method="PATCH", path="/api/orders/7/", status=422)
    make_key("k-running", state=RUNNING, lease_in=timedelta(seconds=30), status=None)

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    columns = {
        "key_display": "Key",
        "scope_display": "Scope",
        "method": "Method",
        "path": "Path",
        "state": "State",
        "response_status": "Response status",
        "created_at": "Created at",
        "expires_at": "Expires at",
    }
    for n, (column, label) in enumerate(columns.items(), start=1):
        assertContains(response, f'class="sortable column-{column}', count=1)
        # The sort link's markup differs between Django versions; its target and label do not.
        assert re.search(rf'<a [^>]*href="\?o={n}">{label}</a>', response.content.decode()), label
    assertContains(
        response, f'<td class="field-scope_display"><span title="user:{alice.pk}">alice</span></td>'
    )
    assertContains(
        response,
        f'<td class="field-scope_display"><span title="{long_scope}">{long_scope[:27]}'
        f'<span class="nowrap">{long_scope[27]}…</span></span></td>',
    )
    assertContains(response, '<td class="field-scope_display">anonymous</td>')
    assertContains(response, '<td class="field-method">PATCH</td>')
    assertContains(response, '<td class="field-path">/api/orders/7/</td>')
    assertContains(response, '<td class="field-state">running</td>')
    assertContains(response, '<td class="field-response_status">201</td>')
    assertContains(response, '<td class="field-response_status">422</td>')
    assertContains(response, '<td class="field-response_status">-</td>')
    assert [key.key for key in response.context["cl"].result_list] == [
        "k-running",
        "k-token",
        "k-user",
    ]


def test_a_long_key_is_cut_in_the_changelist_and_still_links_and_searches(
    admin_client: Client,
) -> None:
    # The longest key a client may send (MAX_KEY_LENGTH), with no space to wrap at.
    long_key = "k" + "0123456789abcdef" * 15 + "z" * 14
    assert len(long_key) == 255
    long_row = make_key(long_key)
    uuid_key = "5b0e4c1e-8f3a-4d2b-9a61-0c7f2e9d4a10"
    uuid_row = make_key(uuid_key)

    response = admin_client.get(CHANGELIST)

    head, last = long_key[: KEY_DISPLAY_CHARS - 1], long_key[KEY_DISPLAY_CHARS - 1]
    assertContains(
        response,
        f'<th class="field-key_display"><a href="{change_url(long_row)}">'
        f'<span title="{long_key}">{head}<span class="nowrap">{last}…</span></span></a></th>',
        html=True,
    )
    # Keys and scopes, which have no spaces, may wrap rather than widen the table.
    assertContains(response, "/static/idempotency/admin.css")
    assertNotContains(response, f">{long_key}<")
    # A UUID, the usual key, fits: shown whole, without a title.
    assertContains(
        response,
        f'<th class="field-key_display"><a href="{change_url(uuid_row)}">{uuid_key}</a></th>',
        html=True,
    )
    # The search looks at the whole key, the part cut off too.
    assert listed(admin_client, q=long_key) == {long_key}
    assert listed(admin_client, q=long_key[-20:]) == {long_key}
    assert listed(admin_client, q="9a61-0c7f") == {uuid_key}
    # The detail page shows the key whole.
    assertContains(admin_client.get(change_url(long_row)), long_key)


def test_scope_of_a_deleted_user_or_a_custom_scope_is_shown_as_is(
    admin_client: Client,
) -> None:
    make_key("gone", scope="user:999999")
    make_key("custom", scope="user:not-a-pk")

    response = admin_client.get(CHANGELIST)

    assertContains(response, '<td class="field-scope_display">user:999999</td>')
    assertContains(response, '<td class="field-scope_display">user:not-a-pk</td>')


def test_changelist_queries_do_not_grow_with_rows(
    admin_client: Client, django_user_model: Any
) -> None:
    def add_keys(start: int, stop: int) -> None:
        for n in range(start, stop):
            user = django_user_model.objects.create_user(f"user{n}")
            make_key(f"k{n}", scope=f"user:{user.pk}", body=b"x" * 1000)

    def page_queries() -> tuple[int, int, list[str]]:
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(CHANGELIST)
        assert response.status_code == 200
        for n in range(len(response.context["cl"].result_list)):
            assertContains(response, f">user{n}</span>")
        sql = [query["sql"] for query in queries.captured_queries]
        return len(response.context["cl"].result_list), len(sql), sql

    add_keys(0, 5)
    admin_client.get(CHANGELIST)  # warm up the session and caches
    rows_5, queries_5, _sql = page_queries()
    add_keys(5, 25)
    rows_25, queries_25, sql_25 = page_queries()

    assert (rows_5, rows_25) == (5, 25)
    assert queries_25 == queries_5
    # The stored bodies are never read for the changelist.
    assert not [sql for sql in sql_25 if '"body"' in sql]


def test_filter_by_state(admin_client: Client) -> None:
    make_key("done")
    make_key("busy", state=RUNNING, lease_in=timedelta(seconds=30), status=None)
    make_key("freed", state=RELEASED, status=None)

    assert listed(admin_client, state__exact="completed") == {"done"}
    assert listed(admin_client, state__exact="running") == {"busy"}
    assert listed(admin_client, state__exact="released") == {"freed"}
    assert listed(admin_client) == {"done", "busy", "freed"}


def test_filter_by_method(admin_client: Client) -> None:
    make_key("post", method="POST")
    make_key("patch", method="PATCH")
    make_key("delete", method="DELETE")

    response = admin_client.get(CHANGELIST)
    for method in ["DELETE", "PATCH", "POST", "PUT"]:
        assertContains(response, f'href="?method={method}"')
    assert listed(admin_client, method="PATCH") == {"patch"}
    assert listed(admin_client, method="POST") == {"post"}
    assert listed(admin_client, method="PUT") == set()


def test_filter_by_status_class(admin_client: Client) -> None:
    make_key("ok", status=201)
    make_key("moved", status=303)
    make_key("bad", status=400)
    make_key("unprocessable", status=422)
    make_key("broken", status=500)
    make_key("none", state=RUNNING, lease_in=timedelta(seconds=30), status=None)

    assert listed(admin_client, status_class="2xx") == {"ok"}
    assert listed(admin_client, status_class="3xx") == {"moved"}
    assert listed(admin_client, status_class="4xx") == {"bad", "unprocessable"}
    assert listed(admin_client, status_class="5xx") == {"broken"}
    assert listed(admin_client, status_class="none") == {"none"}


def test_filter_by_expired(admin_client: Client) -> None:
    make_key("old", expires_in=timedelta(seconds=-1))
    make_key("fresh", expires_in=timedelta(hours=1))

    assert listed(admin_client, expired="yes") == {"old"}
    assert listed(admin_client, expired="no") == {"fresh"}


def test_filters_combine(admin_client: Client) -> None:
    make_key("a", method="PATCH", status=200)
    make_key("b", method="PATCH", status=409)
    make_key("c", method="POST", status=200)

    assert listed(admin_client, method="PATCH", status_class="2xx") == {"a"}


def test_search_by_key_and_by_path(admin_client: Client) -> None:
    make_key("order-2024-0001", path="/api/orders/")
    make_key("order-2024-0002", path="/api/orders/")
    make_key("pay-77", path="/payments/")

    assert listed(admin_client, q="0002") == {"order-2024-0002"}
    assert listed(admin_client, q="pay-77") == {"pay-77"}
    assert listed(admin_client, q="/api/orders/") == {"order-2024-0001", "order-2024-0002"}
    assert listed(admin_client, q="nothing-like-this") == set()


def test_date_hierarchy_on_created(admin_client: Client) -> None:
    make_key("y2024", created_at=datetime(2024, 3, 5, 12, tzinfo=dt_timezone.utc))
    make_key("y2025a", created_at=datetime(2025, 6, 1, 12, tzinfo=dt_timezone.utc))
    make_key("y2025b", created_at=datetime(2025, 7, 1, 12, tzinfo=dt_timezone.utc))

    response = admin_client.get(CHANGELIST)
    assertContains(response, "?created_at__year=2024")
    assert listed(admin_client, created_at__year="2024") == {"y2024"}
    assert listed(admin_client, created_at__year="2025") == {"y2025a", "y2025b"}
    assert listed(admin_client, created_at__year="2025", created_at__month="7") == {"y2025b"}


def test_there_is_no_add_page(admin_client: Client) -> None:
    assert admin_client.get(ADD).status_code == 403
    assertNotContains(admin_client.get(CHANGELIST), ADD)


# -- detail page --------------------------------------------------------------------------


def test_detail_page_shows_the_key(admin_client: Client, django_user_model: Any) -> None:
    bob = django_user_model.objects.create_user("bob")
    key = make_key(
        "k-detail", scope=f"user:{bob.pk}", state=RUNNING, lease_in=timedelta(seconds=30)
    )
    IdempotencyKey.objects.filter(pk=key.pk).update(fingerprint="0123abcd" * 8, fence=7)

    response = admin_client.get(change_url(key))

    assert response.status_code == 200
    assertContains(response, "View idempotency key")
    assertContains(response, "0123abcd" * 8)
    assertContains(response, '<div class="readonly">7</div>', html=True)
    assertContains(response, f'<span title="user:{bob.pk}">bob</span>', html=True)
    assertContains(response, "Live: a request holds this key")
    for label in ["Lease expires at", "Created at", "Completed at", "Expires at", "Fingerprint"]:
        assertContains(response, label)
    # Read-only: no form fields and no save buttons.
    assertNotContains(response, 'name="_save"')
    assertNotContains(response, 'name="key"')


def test_detail_page_lease_states(admin_client: Client) -> None:
    ended = make_key("ended", state=RUNNING, lease_in=timedelta(seconds=-1), status=None)
    done = make_key("done")

    assertContains(admin_client.get(change_url(ended)), "Ended: a retry of the same request")
    assertContains(admin_client.get(change_url(done)), "No lease: the key is not running.")


def test_detail_page_pretty_prints_json(admin_client: Client) -> None:
    body = b'{"zeta": 1, "alpha": [1, 2], "nested": {"html": "<script>x</script>"}}'
    key = make_key("json", body=body, status=201)

    response = admin_client.get(change_url(key))

    pretty = (
        "{\n"
        "  &quot;zeta&quot;: 1,\n"
        "  &quot;alpha&quot;: [\n"
        "    1,\n"
        "    2\n"
        "  ],\n"
        "  &quot;nested&quot;: {\n"
        "    &quot;html&quot;: &quot;&lt;script&gt;x&lt;/script&gt;&quot;\n"
        "  }\n"
        "}</pre>"
    )
    assertContains(response, pretty)
    assertContains(response, f"JSON, pretty-printed; the stored body is {len(body)} bytes")
    assertContains(response, '<div class="readonly">201</div>', html=True)
    assertNotContains(response, "<script>x")


def test_detail_page_recognises_json_without_a_content_type(admin_client: Client) -> None:
    key = make_key("bare-json", headers=[], body=b'[{"b":2,"a":1}]')

    response = admin_client.get(change_url(key))

    assertContains(response, "[\n  {\n    &quot;b&quot;: 2,\n    &quot;a&quot;: 1\n  }\n]</pre>")
    assertContains(response, "No headers were stored.")


def test_detail_page_escapes_html(admin_client: Client) -> None:
    body = b'<script>alert("owned")</script><b>bold</b>'
    key = make_key("html", headers=[["Content-Type", "text/html; charset=utf-8"]], body=body)

    response = admin_client.get(change_url(key))

    assertContains(
        response,
        "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;</pre>",
    )
    assertNotContains(response, "<script>alert")
    assertNotContains(response, "<b>bold</b>")
    assertContains(response, f"Text; the stored body is {len(body)} bytes")


def test_detail_page_truncates_a_large_body(admin_client: Client) -> None:
    body = b"a" * (200 * 1024 - 11) + b"TAIL-MARKER"
    key = make_key("large", headers=[["Content-Type", "text/plain"]], body=body)

    response = admin_client.get(change_url(key))

    assertContains(response, f"Text; the stored body is 204,800 bytes (200.0{NBSP}KB).")
    assertContains(response, f"Truncated: only the first 64.0{NBSP}KB are shown.")
    assertContains(response, "a" * BODY_PREVIEW_BYTES + "</pre>")
    assertNotContains(response, "a" * (BODY_PREVIEW_BYTES + 1))
    assertNotContains(response, "TAIL-MARKER")


def test_detail_page_describes_a_binary_body(admin_client: Client) -> None:
    body = bytes(range(256)) * 4
    key = make_key("binary", headers=[["Content-Type", "application/octet-stream"]], body=body)

    response = admin_client.get(change_url(key))

    assertContains(response, f"Binary body of 1,024 bytes (1.0{NBSP}KB), not shown as text.")
    assertContains(response, "Its first bytes in hexadecimal:")
    assertContains(response, "00000000  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f\n")
    assertContains(response, "000000f0  f0 f1 f2 f3 f4 f5 f6 f7 f8 f9 fa fb fc fd fe ff</pre>")


def test_detail_page_shows_the_headers_table(admin_client: Client) -> None:
    headers = [
        ["Content-Type", "application/json"],
        ["Location", "/payments/5/"],
        ["X-Note", "<b>hi</b>"],
    ]
    key = make_key("headers", headers=headers)

    response = admin_client.get(change_url(key))

    assertContains(
        response,
        "<tr><td><code>Location</code></td><td><code>/payments/5/</code></td></tr>",
        html=True,
    )
    assertContains(
        response,
        "<tr><td><code>X-Note</code></td><td><code>&lt;b&gt;hi&lt;/b&gt;</code></td></tr>",
        html=True,
    )
    assertNotContains(response, "<b>hi</b>")


def test_detail_page_without_a_stored_response(admin_client: Client) -> None:
    key = make_key("released", state=RELEASED, status=None)

    response = admin_client.get(change_url(key))

    assertContains(response, "No stored response: the key is running, or was released")


def test_body_context_edge_cases() -> None:
    # A character split by the preview's cut is dropped, not turned into binary.
    text = "é" * BODY_PREVIEW_BYTES
    shown = body_context(text.encode(), [("Content-Type", "text/plain")])
    assert shown["kind"] == "text"
    assert shown["truncated"] is True
    assert shown["text"] == "é" * (BODY_PREVIEW_BYTES // 2)
    # The declared charset is used; an unknown one falls back to UTF-8.
    latin = body_context(
        "café".encode("latin-1"), [("content-type", "text/plain; charset=latin-1")]
    )
    assert (latin["kind"], latin["text"]) == ("text", "café")
    unknown = body_context(b"plain", [("Content-Type", "text/plain; charset=nope")])
    assert (unknown["kind"], unknown["text"]) == ("text", "plain")
    # Invalid JSON with a JSON content type is shown as text.
    broken = body_context(b'{"a": ', JSON_HEADERS_TUPLES)
    assert (broken["kind"], broken["text"]) == ("text", '{"a": ')
    # NUL bytes make a body binary; an empty body is said to be empty.
    assert body_context(b"a\x00b", [])["kind"] == "binary"
    assert body_context(b"", JSON_HEADERS_TUPLES)["kind"] == "empty"
    # Pretty JSON larger than the preview is truncated too.
    big = json.dumps({"items": list(range(20000))}).encode()
    shown = body_context(big, JSON_HEADERS_TUPLES)
    assert (shown["kind"], shown["truncated"]) == ("json", True)
    assert len(shown["text"].encode()) == BODY_PREVIEW_BYTES


# -- actions ------------------------------------------------------------------------------


def pay(client: Client, key: str) -> Any:
    return client.post(
        "/payments/",
        data=json.dumps({"amount": "12.50", "currency": "EUR", "reference": "r-1"}),
        content_type="application/json",
        HTTP_IDEMPOTENCY_KEY=key,
    )


def test_expire_action_makes_a_completed_key_rerunnable(admin_client: Client) -> None:
    first = pay(admin_client, "pay-expire")
    replayed = pay(admin_client, "pay-expire")
    assert (first.status_code, replayed.status_code) == (201, 201)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert Payment.objects.count() == 1
    key = IdempotencyKey.objects.get(key="pay-expire")
    assert key.state == COMPLETED

    response = run_action(admin_client, "expire_keys", [key])

    assert response.status_code == 200
    assert messages_of(response) == ["Expired 1 key: a request with it runs the view again."]
    key.refresh_from_db()
    assert key.expires_at <= timezone.now()
    assert listed(admin_client, expired="yes") == {"pay-expire"}

    rerun = pay(admin_client, "pay-expire")

    assert rerun.status_code == 201
    assert "Idempotent-Replayed" not in rerun.headers
    assert Payment.objects.count() == 2
    assert rerun.json()["id"] != first.json()["id"]
    key.refresh_from_db()
    assert (key.state, key.fence) == (COMPLETED, 2)
    assert key.expires_at > timezone.now()


def test_expire_action_leaves_live_running_keys_alone(admin_client: Client) -> None:
    done = make_key("done")
    done_too = make_key("done-too")
    old = make_key("old", expires_in=timedelta(seconds=-60))
    busy = make_key("busy", state=RUNNING, lease_in=timedelta(seconds=60), status=None)
    abandoned = make_key("abandoned", state=RUNNING, lease_in=timedelta(seconds=-1), status=None)
    busy_expires = busy.expires_at
    old_expires = old.expires_at

    response = run_action(admin_client, "expire_keys", [done, done_too, old, busy, abandoned])

    assert messages_of(response) == [
        "Expired 3 keys: a request with one of them runs the view again.",
        "1 key had already expired.",
        "Left 1 key alone: its request is still running. Expire it once it has completed.",
    ]
    now = timezone.now()
    for key in [done, done_too, abandoned]:
        key.refresh_from_db()
        assert key.expires_at <= now
    busy.refresh_from_db()
    old.refresh_from_db()
    assert busy.expires_at == busy_expires
    assert old.expires_at == old_expires


def test_delete_action_removes_keys_and_responses(admin_client: Client) -> None:
    gone = make_key("gone")
    kept = make_key("kept")

    with CaptureQueriesContext(connection) as queries:
        confirm = admin_client.post(
            CHANGELIST, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [gone.pk]}
        )
    assert confirm.status_code == 200
    assertContains(confirm, "Are you sure")
    assertContains(confirm, "<li>Idempotency keys: 1</li>", html=True)
    assertContains(confirm, "<li>Stored responses: 1</li>", html=True)
    assertContains(
        confirm,
        f'<li>Idempotency key: <a href="{change_url(gone)}">gone (anonymous)</a>'
        f"<ul><li>Stored response: 201 for {gone.pk}</li></ul></li>",
        html=True,
    )
    assertNotContains(confirm, "kept (anonymous)")
    assert not [q["sql"] for q in queries.captured_queries if '"body"' in q["sql"]]
    assert IdempotencyKey.objects.count() == 2

    response = run_action(admin_client, "delete_selected", [gone], post="yes")

    assert messages_of(response) == ["Successfully deleted 1 idempotency key."]
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["kept"]
    assert list(IdempotencyResponse.objects.values_list("idempotency_key", flat=True)) == [kept.pk]


def test_delete_from_the_detail_page(admin_client: Client) -> None:
    key = make_key("single")
    delete_url = reverse("admin:idempotency_idempotencykey_delete", args=[key.pk])

    assertContains(admin_client.get(change_url(key)), delete_url)
    confirm = admin_client.get(delete_url)
    assertContains(confirm, "<li>Stored responses: 1</li>", html=True)
    response = admin_client.post(delete_url, {"post": "yes"})

    assert response.status_code == 302
    assert IdempotencyKey.objects.count() == 0
    assert IdempotencyResponse.objects.count() == 0


# -- permissions --------------------------------------------------------------------------


def test_staff_without_permissions_get_403(client: Client, django_user_model: Any) -> None:
    key = make_key("secret")
    client.force_login(staff(django_user_model, "nobody"))

    assert client.get(CHANGELIST).status_code == 403
    assert client.get(change_url(key)).status_code == 403
    response = client.post(CHANGELIST, {"action": "expire_keys", ACTION_CHECKBOX_NAME: [key.pk]})
    assert response.status_code == 403
    assert IdempotencyKey.objects.get(pk=key.pk).expires_at == key.expires_at


def test_anonymous_users_are_sent_to_the_login_page(client: Client) -> None:
    response = client.get(CHANGELIST)

    assert response.status_code == 302
    assert response.headers["Location"].startswith(reverse("admin:login"))


def test_view_permission_can_look_but_not_act(client: Client, django_user_model: Any) -> None:
    key = make_key("look")
    client.force_login(staff(django_user_model, "viewer", "view_idempotencykey"))

    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert [k.key for k in response.context["cl"].result_list] == ["look"]
    assertNotContains(response, 'name="action"')
    assertContains(client.get(change_url(key)), "View idempotency key")

    # No action is offered, so a forged POST runs none.
    expire = run_action(client, "expire_keys", [key])
    assert expire.status_code == 200
    assert messages_of(expire) == []
    delete = client.post(CHANGELIST, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [key.pk]})
    assert delete.status_code == 200
    assert "Are you sure" not in delete.content.decode()
    assert client.post(change_url(key), {"key": "x"}).status_code == 403
    delete_url = reverse("admin:idempotency_idempotencykey_delete", args=[key.pk])
    assert client.post(delete_url, {"post": "yes"}).status_code == 403

    key_after = IdempotencyKey.objects.get(pk=key.pk)
    assert (key_after.key, key_after.expires_at) == ("look", key.expires_at)


def test_change_permission_may_expire_but_not_delete(
    client: Client, django_user_model: Any
) -> None:
    key = make_key("expire-me")
    client.force_login(staff(django_user_model, "operator", "change_idempotencykey"))

    page = client.get(CHANGELIST)
    assertContains(page, '<option value="expire_keys">')
    assertNotContains(page, '<option value="delete_selected">')
    assert client.get(ADD).status_code == 403

    response = run_action(client, "expire_keys", [key])

    assert messages_of(response) == ["Expired 1 key: a request with it runs the view again."]
    key.refresh_from_db()
    assert key.expires_at <= timezone.now()


def test_delete_permission_may_delete(client: Client, django_user_model: Any) -> None:
    key = make_key("delete-me")
    client.force_login(
        staff(django_user_model, "janitor", "view_idempotencykey", "delete_idempotencykey")
    )

    page = client.get(CHANGELIST)
    assertContains(page, '<option value="delete_selected">')
    assertNotContains(page, '<option value="expire_keys">')
    response = run_action(client, "delete_selected", [key], post="yes")

    assert messages_of(response) == ["Successfully deleted 1 idempotency key."]
    assert IdempotencyKey.objects.count() == 0
