"""A read-only admin for idempotency keys and their stored responses.

Staff browse keys with the model's view (or change) permission, expire them with
the change permission, and delete them with the delete permission. Nothing can be
added or edited: the rows belong to the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_permission_codename, get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.html import format_html
from django.utils.http import parse_header_parameters
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from idempotency.conf import idempotency_settings
from idempotency.models import (
    IdempotencyKey,
    IdempotencyResponse,
    OutgoingAttempt,
    OutgoingOperation,
)

if TYPE_CHECKING:
    _KeyAdminBase = admin.ModelAdmin[IdempotencyKey]
    _OperationAdminBase = admin.ModelAdmin[OutgoingOperation]
    _AttemptInlineBase = admin.TabularInline[OutgoingAttempt, OutgoingOperation]
else:
    _KeyAdminBase = _OperationAdminBase = admin.ModelAdmin
    _AttemptInlineBase = admin.TabularInline

#: Bodies are shown up to this many bytes (of text, or of pretty-printed JSON).
BODY_PREVIEW_BYTES = 64 * 1024
#: Larger bodies are not parsed as JSON: they are shown as (truncated) text.
JSON_PARSE_MAX_BYTES = 1024 * 1024
#: A binary body is shown as a hex dump of its first bytes.
HEX_PREVIEW_BYTES = 256
#: Scopes longer than this are cut in the changelist (the full scope is in the title).
SCOPE_DISPLAY_CHARS = 28
#: Keys longer than this are cut in the changelist (the full key is in the title); a
#: UUID, the usual key, is shown whole.
KEY_DISPLAY_CHARS = 36

USER_SCOPE_PREFIX = "user:"
#: Set on each key of a changelist page: the user its ``user:<pk>`` scope names, or None.
_SCOPE_USER_ATTR = "_idempotency_scope_user"

STATUS_CLASSES = {
    "2xx": (200, 299),
    "3xx": (300, 399),
    "4xx": (400, 499),
    "5xx": (500, 599),
}


def attach_scope_users(keys: Iterable[IdempotencyKey]) -> None:
    """Look up the users that the keys' ``user:<pk>`` scopes name, in one query."""
    keys = list(keys)
    user_model = get_user_model()
    pk_field = user_model._meta.pk
    assert pk_field is not None
    wanted: dict[int, Any] = {}
    for key in keys:
        if not key.scope.startswith(USER_SCOPE_PREFIX):
            continue
        try:
            wanted[key.pk] = pk_field.to_python(key.scope[len(USER_SCOPE_PREFIX) :])
        except ValidationError:
            continue  # a custom scope that only looks like a user's
    users = user_model._default_manager.in_bulk(set(wanted.values())) if wanted else {}
    for key in keys:
        setattr(key, _SCOPE_USER_ATTR, users.get(wanted.get(key.pk)))


class IdempotencyKeyChangeList(ChangeList):
    """Never loads a stored body or its headers; resolves the users behind the scopes
    of the page's keys in one query."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        return (
            super()
            .get_queryset(request, exclude_parameters)
            .defer("response_headers", "response_body")
        )

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # Evaluates the page's queryset; the template then iterates its cached rows.
        attach_scope_users(self.result_list)


class _KeyFilter(admin.SimpleListFilter):
    """A list filter whose choices each stand for one condition on the keys."""

    def condition(self, value: str) -> Q | None:
        """The condition that the choice ``value`` stands for (None: no filtering)."""
        raise NotImplementedError

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[IdempotencyKey]
    ) -> QuerySet[IdempotencyKey]:
        value = self.value()
        condition = self.condition(value) if value else None
        if condition is None:
            return queryset
        filtered: QuerySet[IdempotencyKey] = queryset.filter(condition)
        return filtered


class MethodFilter(_KeyFilter):
    """The methods in ``IDEMPOTENCY["METHODS"]``: no ``DISTINCT`` scan of a large table."""

    title = _("method")
    parameter_name = "method"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(method, method) for method in sorted(idempotency_settings.get().methods)]

    def condition(self, value: str) -> Q | None:
        return Q(method=value)


class StatusClassFilter(_KeyFilter):
    title = _("response status")
    parameter_name = "status_class"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("2xx", _("2xx success")),
            ("3xx", _("3xx redirection")),
            ("4xx", _("4xx client error")),
            ("5xx", _("5xx server error")),
            ("none", _("No stored response")),
        ]

    def condition(self, value: str) -> Q | None:
        if value == "none":
            return Q(response_status__isnull=True)
        if value in STATUS_CLASSES:
            return Q(response_status__range=STATUS_CLASSES[value])
        return None


class ExpiredFilter(_KeyFilter):
    title = _("expired")
    parameter_name = "expired"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No"))]

    def condition(self, value: str) -> Q | None:
        if value == "yes":
            return Q(expires_at__lte=timezone.now())
        if value == "no":
            return Q(expires_at__gt=timezone.now())
        return None


def _shorten(value: str, limit: int) -> str:
    """``value`` cut after ``limit`` characters, with an ellipsis and the whole in a title."""
    if len(value) <= limit:
        return value
    head = value[:limit]
    # The stylesheet lets long values wrap anywhere; the ellipsis stays with the text.
    return format_html(
        '<span title="{}">{}<span class="nowrap">{}…</span></span>', value, head[:-1], head[-1]
    )


def _content_type(headers: list[tuple[str, str]]) -> tuple[str, str]:
    """The response's media type (lower case) and charset ('' when not given)."""
    for name, value in headers:
        if name.lower() == "content-type":
            media_type, params = parse_header_parameters(value)
            return media_type.lower(), params.get("charset", "")
    return "", ""


def _is_json_type(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _cut(data: bytes, limit: int, charset: str) -> str | None:
    """``data[:limit]`` as text; None when it is not text in ``charset``."""
    head = data[:limit]
    try:
        text = head.decode(charset)
    except UnicodeDecodeError as exc:
        # A character split by the cut is dropped; any other error means binary.
        if len(data) <= limit or exc.start < len(head) - 4:
            return None
        try:
            text = head[: exc.start].decode(charset)
        except UnicodeDecodeError:
            return None
    return None if "\x00" in text else text


def _pair_list(headers: Any) -> list[tuple[str, str]]:
    if not isinstance(headers, list):
        return []
    return [
        (str(pair[0]), str(pair[1]))
        for pair in headers
        if isinstance(pair, list | tuple) and len(pair) == 2
    ]


def _size_text(size: int) -> str:
    text = ngettext("%(bytes)s byte", "%(bytes)s bytes", size) % {
        "bytes": number_format(size, force_grouping=True)
    }
    if size >= 1024:
        text = f"{text} ({filesizeformat(size)})"
    return text


def body_context(body: bytes, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """What the detail page shows of a stored body: pretty JSON, text, or a binary note."""
    media_type, charset = _content_type(headers)
    try:
        "".encode(charset or "utf-8")
    except LookupError:
        charset = ""
    charset = charset or "utf-8"
    size = len(body)
    context: dict[str, Any] = {
        "size": size,
        "size_text": _size_text(size),
        "media_type": media_type,
        "limit": BODY_PREVIEW_BYTES,
        "truncated": False,
    }
    if not body:
        return {**context, "kind": "empty"}
    looks_json = _is_json_type(media_type) or body.lstrip()[:1] in (b"{", b"[")
    if looks_json and size <= JSON_PARSE_MAX_BYTES:
        try:
            data = json.loads(body.decode(charset))
        except (ValueError, RecursionError):
            pass
        else:
            pretty = json.dumps(data, indent=2, sort_keys=False, ensure_ascii=False).encode()
            shown = _cut(pretty, BODY_PREVIEW_BYTES, "utf-8") or ""
            truncated = len(pretty) > BODY_PREVIEW_BYTES
            return {**context, "kind": "json", "text": shown, "truncated": truncated}
    text = _cut(body, BODY_PREVIEW_BYTES, charset)
    if text is None:
        head = body[:HEX_PREVIEW_BYTES]
        lines = [
            f"{offset:08x}  {head[offset : offset + 16].hex(' ')}"
            for offset in range(0, len(head), 16)
        ]
        return {
            **context,
            "kind": "binary",
            "hex": "\n".join(lines),
            "hex_truncated": size > HEX_PREVIEW_BYTES,
        }
    return {**context, "kind": "text", "text": text, "truncated": size > BODY_PREVIEW_BYTES}


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(_KeyAdminBase):
    list_display = [
        "key_display",
        "scope_display",
        "method",
        "path",
        "state",
        "response_status",
        "created_at",
        "expires_at",
    ]
    list_display_links = ["key_display"]
    list_filter = ["state", MethodFilter, StatusClassFilter, ExpiredFilter]
    search_fields = ["key", "path"]
    date_hierarchy = "created_at"
    # Newest first along the primary key's index, never a sort of the whole table.
    ordering = ["-pk"]
    # One COUNT(*) of a table that may hold millions of rows is enough per page.
    show_full_result_count = False
    actions = ["expire_keys"]
    fieldsets = [
        (
            None,
            {"fields": ["key", "scope_display", "method", "path", "state"]},
        ),
        (_("Request"), {"fields": ["fingerprint"]}),
        (_("Lease"), {"fields": ["fence", "lease_expires_at", "lease_state"]}),
        (_("Timestamps"), {"fields": ["created_at", "completed_at", "expires_at"]}),
        (
            _("Stored response"),
            {"fields": ["response_status", "stored_headers", "stored_body"]},
        ),
    ]
    readonly_fields = [
        "key",
        "scope_display",
        "method",
        "path",
        "state",
        "fingerprint",
        "fence",
        "lease_expires_at",
        "lease_state",
        "created_at",
        "completed_at",
        "expires_at",
        "response_status",
        "stored_headers",
        "stored_body",
    ]

    class Media:
        # Lets long keys and scopes wrap in the changelist.
        css = {"all": ["idempotency/admin.css"]}

    # -- permissions ------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The detail page is for viewing; the change permission grants the expire action.
        return False

    def has_expire_permission(self, request: HttpRequest) -> bool:
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    # -- queries ----------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[IdempotencyKey]:
        # The changelist defers the stored body and headers (IdempotencyKeyChangeList);
        # the detail page loads the ones it shows, with the key.
        queryset: QuerySet[IdempotencyKey] = super().get_queryset(request).using(self.database)
        return queryset

    @property
    def database(self) -> str:
        """The store's database alias (``IDEMPOTENCY["DATABASE"]``), where the keys are."""
        return idempotency_settings.get().database

    def get_deleted_objects(
        self, objs: Sequence[IdempotencyKey] | QuerySet[IdempotencyKey], request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        """The keys and their stored responses, for the delete confirmation page.

        Django's version collects related rows on the default database and loads
        every stored body to print it; this one asks the store's database for the
        responses' statuses only.
        """
        keys = list(objs)
        if not keys:
            return [], {}, set(), []
        wanted = objs.values("pk") if isinstance(objs, QuerySet) else [key.pk for key in keys]
        responses = {
            pk: IdempotencyResponse(idempotency_key_id=pk, status=status)
            for pk, status in IdempotencyKey.objects.using(self.database)
            .filter(pk__in=wanted, response_status__isnull=False)
            .values_list("pk", "response_status")
        }
        opts, response_opts = IdempotencyKey._meta, IdempotencyResponse._meta
        to_delete: list[Any] = []
        for key in keys:
            url = reverse(
                f"{self.admin_site.name}:{opts.app_label}_{opts.model_name}_change",
                args=[quote(key.pk)],
            )
            to_delete.append(
                format_html('{}: <a href="{}">{}</a>', capfirst(opts.verbose_name), url, key)
            )
            response = responses.get(key.pk)
            if response is not None:
                to_delete.append([f"{capfirst(response_opts.verbose_name)}: {response}"])
        model_count = {str(opts.verbose_name_plural): len(keys)}
        if responses:
            model_count[str(response_opts.verbose_name_plural)] = len(responses)
        perms_needed = set() if self.has_delete_permission(request) else {str(opts.verbose_name)}
        return to_delete, model_count, perms_needed, []

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return IdempotencyKeyChangeList

    def _response(self, obj: IdempotencyKey) -> IdempotencyResponse | None:
        """The key's stored response, from the key's own row (no query)."""
        if obj.response_status is None:
            return None
        return IdempotencyResponse(
            idempotency_key=obj,
            status=obj.response_status,
            headers=obj.response_headers or [],
            body=obj.response_body or b"",
        )

    # -- columns and fields -----------------------------------------------------------

    @admin.display(description=_("key"), ordering="key")
    def key_display(self, obj: IdempotencyKey) -> str:
        # A key may be 255 characters without a space: whole, it would push the other
        # columns off the screen.
        return _shorten(obj.key, KEY_DISPLAY_CHARS)

    @admin.display(description=_("scope"), ordering="scope")
    def scope_display(self, obj: IdempotencyKey) -> str:
        if not hasattr(obj, _SCOPE_USER_ATTR):
            attach_scope_users([obj])
        user = getattr(obj, _SCOPE_USER_ATTR)
        if user is not None:
            return format_html('<span title="{}">{}</span>', obj.scope, user)
        return _shorten(obj.scope, SCOPE_DISPLAY_CHARS)

    @admin.display(description=_("lease"))
    def lease_state(self, obj: IdempotencyKey) -> str:
        lease: datetime | None = obj.lease_expires_at
        if obj.state != str(IdempotencyKey.State.RUNNING) or lease is None:
            return str(_("No lease: the key is not running."))
        if lease > timezone.now():
            return str(
                _("Live: a request holds this key; a retry waits or gets 409 until it ends.")
            )
        return str(
            _("Ended: a retry of the same request takes the key over; another is a mismatch.")
        )

    @admin.display(description=_("headers"))
    def stored_headers(self, obj: IdempotencyKey) -> SafeString | None:
        response = self._response(obj)
        if response is None:
            return None
        return render_to_string(
            "admin/idempotency/idempotencykey/response_headers.html",
            {"headers": _pair_list(response.headers)},
        )

    @admin.display(description=_("body"))
    def stored_body(self, obj: IdempotencyKey) -> SafeString:
        response = self._response(obj)
        if response is None:
            context: dict[str, Any] = {"kind": "none"}
        else:
            context = body_context(bytes(response.body), _pair_list(response.headers))
        return render_to_string("admin/idempotency/idempotencykey/response_body.html", context)

    # -- actions ----------------------------------------------------------------------

    @admin.action(
        description=_("Expire selected %(verbose_name_plural)s"),
        permissions=["expire"],
    )
    def expire_keys(self, request: HttpRequest, queryset: QuerySet[IdempotencyKey]) -> None:
        """Make completed and released keys re-runnable: the next request runs the view.

        A key still running under a live lease is left alone: its request would set a
        new expiry when it completes, and until its lease ends the engine lets no
        retry run anyway.
        """
        now = timezone.now()
        selected = IdempotencyKey.objects.using(self.database).filter(pk__in=queryset.values("pk"))
        live = Q(state=IdempotencyKey.State.RUNNING, lease_expires_at__gt=now)
        running = selected.filter(live).count()
        already = selected.exclude(live).filter(expires_at__lte=now).count()
        expired = selected.exclude(live).filter(expires_at__gt=now).update(expires_at=now)
        self.message_user(
            request,
            ngettext(
                "Expired %(count)d key: a request with it runs the view again.",
                "Expired %(count)d keys: a request with one of them runs the view again.",
                expired,
            )
            % {"count": expired},
            messages.SUCCESS if expired else messages.INFO,
        )
        if already:
            self.message_user(
                request,
                ngettext(
                    "%(count)d key had already expired.",
                    "%(count)d keys had already expired.",
                    already,
                )
                % {"count": already},
                messages.INFO,
            )
        if running:
            self.message_user(
                request,
                ngettext(
                    "Left %(count)d key alone: its request is still running. "
                    "Expire it once it has completed.",
                    "Left %(count)d keys alone: their requests are still running. "
                    "Expire them once they have completed.",
                    running,
                )
                % {"count": running},
                messages.WARNING,
            )


class OutgoingAttemptInline(_AttemptInlineBase):
    model = OutgoingAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "finished_at", "status", "error", "verdict"]
    readonly_fields = ["number", "started_at", "finished_at", "status", "error", "verdict"]
    ordering = ["number"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutgoingAttempt]:
        queryset: QuerySet[OutgoingAttempt] = (
            super().get_queryset(request).using(idempotency_settings.get().database)
        )
        return queryset


@admin.register(OutgoingOperation)
class OutgoingOperationAdmin(_OperationAdminBase):
    """Outgoing operations and their attempts, read-only: the rows belong to the client."""

    list_display = [
        "name",
        "reference",
        "state",
        "attempts",
        "response_status",
        "method",
        "url",
        "created_at",
        "completed_at",
    ]
    list_display_links = ["name", "reference"]
    list_filter = ["state", "name"]
    search_fields = ["reference", "key"]
    date_hierarchy = "created_at"
    ordering = ["-pk"]
    show_full_result_count = False
    inlines = [OutgoingAttemptInline]
    fieldsets = [
        (None, {"fields": ["name", "reference", "key", "header", "state", "attempts", "error"]}),
        (
            _("Request"),
            {"fields": ["method", "url", "fingerprint", "stored_request_headers", "stored_body"]},
        ),
        (_("Lease"), {"fields": ["lease_expires_at"]}),
        (_("Timestamps"), {"fields": ["created_at", "updated_at", "completed_at"]}),
        (
            _("Response"),
            {
                "fields": [
                    "response_status",
                    "stored_response_headers",
                    "stored_response_body",
                    "response_truncated",
                ]
            },
        ),
    ]
    readonly_fields = [
        "name",
        "reference",
        "key",
        "header",
        "state",
        "attempts",
        "error",
        "method",
        "url",
        "fingerprint",
        "stored_request_headers",
        "stored_body",
        "lease_expires_at",
        "created_at",
        "updated_at",
        "completed_at",
        "response_status",
        "stored_response_headers",
        "stored_response_body",
        "response_truncated",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutgoingOperation]:
        queryset: QuerySet[OutgoingOperation] = (
            super()
            .get_queryset(request)
            .using(idempotency_settings.get().database)
            .defer("request_body", "response_body")
        )
        return queryset

    def _headers(self, headers: Any) -> SafeString:
        return render_to_string(
            "admin/idempotency/idempotencykey/response_headers.html",
            {"headers": _pair_list(headers)},
        )

    @admin.display(description=_("headers"))
    def stored_request_headers(self, obj: OutgoingOperation) -> SafeString:
        return self._headers(obj.request_headers)

    @admin.display(description=_("body"))
    def stored_body(self, obj: OutgoingOperation) -> SafeString:
        context = body_context(bytes(obj.request_body), _pair_list(obj.request_headers))
        return render_to_string("admin/idempotency/idempotencykey/response_body.html", context)

    @admin.display(description=_("headers"))
    def stored_response_headers(self, obj: OutgoingOperation) -> SafeString:
        return self._headers(obj.response_headers)

    @admin.display(description=_("body"))
    def stored_response_body(self, obj: OutgoingOperation) -> SafeString:
        if obj.response_status is None:
            return format_html("<p>{}</p>", _("No response recorded yet."))
        context = body_context(bytes(obj.response_body), _pair_list(obj.response_headers))
        return render_to_string("admin/idempotency/idempotencykey/response_body.html", context)
