"""The admin of idempotency keys in a real browser, against a real server.

Playwright drives Debian's chromium (``apt-get install chromium``), never a
browser of its own, against the testproject served on 127.0.0.1 by
pytest-django's ``live_server`` (a threaded WSGI server sharing the test
database). The screenshots it takes are the ones in the documentation
(``docs/_static/admin-*.png``).

Playwright's sync API runs an event loop in this thread while the browser is
open, and Django refuses ORM calls there; so the database is set up before the
browser starts and checked after it has closed, and in between everything goes
through HTTP.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from shop.models import Payment

from idempotency.admin import KEY_DISPLAY_CHARS
from idempotency.models import IdempotencyKey

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "_static"
# Milliseconds: every wait in the browser is bounded.
LAUNCH_TIMEOUT = 30_000
STEP_TIMEOUT = 10_000
NAVIGATION_TIMEOUT = 20_000

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="playwright is not installed (tox -e browser; pip install -r requirements/browser.txt)",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.urls("testproject.urls"),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)",
    ),
]

PASSWORD = "browser-test-password"
PAYMENT = {"amount": "12.50", "currency": "EUR", "reference": "invoice 1001"}
# The longest key a client may send (MAX_KEY_LENGTH), with nowhere to wrap.
LONG_KEY = "batch-" + "5f0c9e2a7b" * 24 + "d1e2f3a4b"
assert len(LONG_KEY) == 255
# The narrowest viewport the changelist must fit without scrolling sideways.
NARROW_WIDTH = 1400


def save_screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    """Write the screenshot in one step, so parallel runs never leave half a file."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    data = page.screenshot(full_page=full_page, animations="disabled", caret="hide")
    fd, tmp = tempfile.mkstemp(dir=SCREENSHOTS, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, SCREENSHOTS / name)


def seed_other_keys(admin: Any) -> None:
    """A few keys in other states, so that the changelist shows what it can show."""
    now = timezone.now()
    rows = [
        ("order-7f3a", f"user:{admin.pk}", "POST", "/api/orders/", "running", 30, None),
        (
            "refund-0042",
            "authorization:" + "9c1e" * 16,
            "PUT",
            "/api/orders/12/",
            "released",
            0,
            None,
        ),
        ("order-77aa", f"user:{admin.pk}", "PATCH", "/api/orders/9/", "completed", 0, 200),
        ("sub-2b91", "anonymous", "DELETE", "/api/orders/3/", "completed", 0, 204),
        (LONG_KEY, "anonymous", "POST", "/api/orders/", "released", 0, None),
    ]
    for key, scope, method, path, state, lease, status in rows:
        row = IdempotencyKey.objects.create(
            scope=scope,
            key=key,
            fingerprint="b" * 64,
            method=method,
            path=path,
            state=state,
            lease_expires_at=now + timedelta(seconds=lease) if lease else None,
            completed_at=now if state == "completed" else None,
            expires_at=now + timedelta(hours=24),
        )
        if status is not None:
            IdempotencyKey.objects.filter(pk=row.pk).update(
                response_status=status,
                response_headers=[["Content-Type", "application/json"]],
                response_body=(
                    json.dumps({"id": 9, "status": "shipped"}).encode() if status == 200 else b""
                ),
            )


def test_admin_in_a_browser(live_server: Any, django_user_model: Any, tmp_path: Path) -> None:
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    seed_other_keys(admin)
    base = live_server.url
    results: dict[str, Any] = {}

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=LAUNCH_TIMEOUT
        )
        try:
            context = browser.new_context(
                viewport={"width": 1600, "height": 900}, color_scheme="light", locale="en-US"
            )
            # The admin's navigation sidebar starts closed: the screenshots need the room.
            context.add_init_script(
                "localStorage.setItem('django.admin.navSidebarIsOpen', 'false');"
            )
            context.set_default_timeout(STEP_TIMEOUT)
            context.set_default_navigation_timeout(NAVIGATION_TIMEOUT)
            results = drive_the_admin(context, base, tmp_path)
        finally:
            browser.close()

    # The browser is closed: the ORM may be used again.
    first, rerun = results["first"], results["rerun"]
    assert Payment.objects.count() == 2
    assert set(Payment.objects.values_list("pk", flat=True)) == {first["id"], rerun["id"]}
    key = IdempotencyKey.objects.get(key="pay-1001")
    assert (key.state, key.fence) == ("completed", 2)
    assert key.expires_at > timezone.now()


def pay(context: Any, base: str, key: str, body: dict[str, Any]) -> Any:
    return context.request.post(
        f"{base}/payments/",
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
        data=json.dumps(body),
        timeout=STEP_TIMEOUT,
    )


def result_keys(page: Any) -> list[str]:
    """The full keys of the changelist's rows (a long key is cut, and whole in its title)."""
    links = page.locator("#result_list tbody th.field-key_display a")
    return [
        link.locator("span[title]").get_attribute("title")
        if link.locator("span[title]").count()
        else link.inner_text()
        for link in links.all()
    ]


def horizontal_overflow(page: Any) -> dict[str, float]:
    """How far, in CSS pixels, the changelist reaches past what is in sight (> 0: too far).

    The results table scrolls inside its own box, which the filters sit beside: a table
    too wide for it leaves the page as wide as the window and hides its last columns.
    """
    overflow: dict[str, float] = page.evaluate(
        """() => {
            const table = document.querySelector("#result_list");
            const box = table.parentElement;
            const lastHeader = table.querySelector("thead th:last-child");
            return {
                page: document.documentElement.scrollWidth - window.innerWidth,
                tableInItsBox: box.scrollWidth - box.clientWidth,
                lastColumn: lastHeader.getBoundingClientRect().right
                    - box.getBoundingClientRect().right,
            };
        }"""
    )
    return overflow


def drive_the_admin(context: Any, base: str, tmp_path: Path) -> dict[str, Any]:
    expect = sync_api.expect
    page = context.new_page()

    # Log in through the admin's login form.
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()
    expect(page.get_by_role("link", name="Idempotency keys")).to_be_visible()

    # Requests with keys, sent with the browser's session (so the scope is the admin):
    # one replayed, one answered 400.
    first = pay(context, base, "pay-1001", PAYMENT)
    assert first.status == 201, first.text()
    replayed = pay(context, base, "pay-1001", PAYMENT)
    assert replayed.status == 201
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.json() == first.json()
    invalid = pay(context, base, "pay-1002", {"amount": "-1", "currency": "EUR"})
    assert invalid.status == 400

    # The changelist.
    page.get_by_role("link", name="Idempotency keys").first.click()
    expect(page.locator("#result_list")).to_be_visible()
    assert sorted(result_keys(page)) == [
        LONG_KEY,
        "order-77aa",
        "order-7f3a",
        "pay-1001",
        "pay-1002",
        "refund-0042",
        "sub-2b91",
    ]
    row = page.locator("#result_list tbody tr", has=page.get_by_role("link", name="pay-1001"))
    expect(row.locator("td.field-scope_display")).to_have_text("admin")
    expect(row.locator("td.field-response_status")).to_have_text("201")
    save_screenshot(page, "admin-changelist.png")

    # The longest key is cut (whole in its title), and the list still fits a narrower
    # screen: every column in sight, no scrolling sideways.
    long_link = page.locator("#result_list th.field-key_display a", has_text=LONG_KEY[:20])
    expect(long_link).to_have_text(LONG_KEY[:KEY_DISPLAY_CHARS] + "…")
    expect(long_link.locator("span[title]")).to_have_attribute("title", LONG_KEY)
    page.set_viewport_size({"width": NARROW_WIDTH, "height": 900})
    page.screenshot(path=str(tmp_path / "admin-changelist-narrow.png"), animations="disabled")
    expect(page.locator("#result_list thead th").last).to_be_in_viewport()
    overflow = horizontal_overflow(page)
    assert all(pixels <= 0 for pixels in overflow.values()), overflow
    page.set_viewport_size({"width": 1600, "height": 900})

    # Filter by state.
    filters = page.locator("#changelist-filter")
    filters.get_by_role("link", name="running", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    assert result_keys(page) == ["order-7f3a"]
    filters.get_by_role("link", name="completed", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(4)
    assert sorted(result_keys(page)) == ["order-77aa", "pay-1001", "pay-1002", "sub-2b91"]

    # Search a key (within the filter).
    page.fill("#searchbar", "pay-1001")
    page.press("#searchbar", "Enter")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    assert result_keys(page) == ["pay-1001"]

    # Open it: the stored body, pretty-printed.
    page.locator("#result_list").get_by_role("link", name="pay-1001").click()
    expect(page.locator("h1")).to_have_text("View idempotency key")
    body = page.locator("pre.idempotency-body")
    expect(body).to_be_visible()
    assert body.inner_text() == json.dumps(first.json(), indent=2)
    headers = page.locator("table.idempotency-headers")
    expect(headers.locator("tr", has_text="Content-Type")).to_contain_text("application/json")
    save_screenshot(page, "admin-detail.png", full_page=True)

    # Back to the list; expire the key with the action.
    page.go_back()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.locator("#result_list tbody tr input.action-select").check()
    page.select_option("select[name=action]", "expire_keys")
    page.click("button[name=index]")
    message = page.locator("ul.messagelist li.success")
    expect(message).to_have_text("Expired 1 key: a request with it runs the view again.")
    save_screenshot(page, "admin-expire.png")

    page.goto(f"{base}/admin/idempotency/idempotencykey/?expired=yes")
    assert result_keys(page) == ["pay-1001"]

    # The key is re-runnable: the same request runs the view again.
    rerun = pay(context, base, "pay-1001", PAYMENT)
    assert rerun.status == 201, rerun.text()
    assert "idempotent-replayed" not in rerun.headers
    assert rerun.json()["id"] != first.json()["id"]
    assert {k: v for k, v in rerun.json().items() if k != "id"} == {
        k: v for k, v in first.json().items() if k != "id"
    }
    page.goto(f"{base}/admin/idempotency/idempotencykey/?expired=no&q=pay-1001")
    assert result_keys(page) == ["pay-1001"]
    return {"first": first.json(), "rerun": rerun.json()}
