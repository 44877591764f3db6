"""How a request is fingerprinted, and helpers for views that want another way."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.http.request import RawPostDataException
from django.utils.http import parse_header_parameters

#: The form field that carries Django's CSRF token. A re-rendered form masks the
#: token afresh, so it never counts in a fingerprint; the CSRF check has run before.
CSRF_FIELD = "csrfmiddlewaretoken"
FORM_DATA = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"

_CSRF = CSRF_FIELD.encode()
# Django's MultiPartParser.boundary_re and MAX_TOTAL_HEADER_SIZE: a boundary Django
# refuses, and a part whose headers Django does not read in full, are not walked.
_BOUNDARY_RE = re.compile(r"[ -~]{0,200}[!-~]")
_PART_HEADERS_MAX = 1024
_HEADER_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LINE_BREAKS = re.compile(rb"[\r\n\x00]")


class BodyTooLarge(Exception):
    """The body is larger than ``DATA_UPLOAD_MAX_MEMORY_SIZE`` and cannot be read whole."""


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


def _optional(data: bytes | None) -> bytes:
    return b"\x00" if data is None else b"\x01" + _frame(data)


# -- multipart/form-data ---------------------------------------------------------------


class _Malformed(Exception):
    pass


class _PartHead(NamedTuple):
    name: bytes
    filename: bytes | None
    content_type: bytes | None
    others: tuple[tuple[bytes, bytes], ...]

    def record(self) -> bytes:
        others = b"".join(_frame(name) + _frame(value) for name, value in self.others)
        return (
            b"p"
            + _frame(self.name)
            + _optional(self.filename)
            + _optional(self.content_type)
            + len(self.others).to_bytes(8, "big")
            + others
        )


def _part_head(block: bytes) -> _PartHead:
    """The headers of one part, read as Django's multipart parser reads them.

    Anything Django would read differently from a well-formed part (a line it
    skips, a header sent twice, no ``name``) makes the body malformed here.
    """
    seen: set[bytes] = set()
    disposition: dict[str, bytes] | None = None
    content_type: bytes | None = None
    others: list[tuple[bytes, bytes]] = []
    for line in block.split(b"\r\n") if block else ():
        name, colon, value = line.partition(b":")
        if not colon or not _HEADER_NAME.fullmatch(name) or _LINE_BREAKS.search(line):
            raise _Malformed
        name = name.lower()
        if name in seen:
            raise _Malformed
        seen.add(name)
        try:
            main, params = parse_header_parameters(line.decode())
            encoded = {key: item.encode() for key, item in params.items()}
        except ValueError:
            raise _Malformed from None
        if main.partition(":")[0].encode() != name:
            raise _Malformed
        if name == b"content-disposition":
            disposition = encoded
        elif name == b"content-type":
            content_type = value.strip(b" \t")
        else:
            others.append((name, value.strip(b" \t")))
    if disposition is None or "name" not in disposition:
        raise _Malformed
    return _PartHead(disposition["name"], disposition.get("filename"), content_type, tuple(others))


_DELIMITER, _HEADERS, _DATA, _EPILOGUE = range(4)


class FormDataDigest:
    """SHA-256 over the parts of a ``multipart/form-data`` body, never its boundary.

    :meth:`feed` the body in chunks of any size, in order, then call
    :meth:`digest`: the same parts give the same digest whatever the boundary and
    however the body was cut into chunks. Each part counts with its name, its
    filename (absent or not), its ``Content-Type`` (absent or not), its other
    headers and its bytes; a part named ``csrfmiddlewaretoken`` without a
    filename does not count. ``digest()`` is ``None`` for a body that is not
    well-formed for this boundary: such a body is fingerprinted by its bytes.
    """

    def __init__(self, boundary: bytes) -> None:
        self._dash = b"--" + boundary
        self._records = hashlib.sha256(b"multipart/form-data parts\n")
        self._buffer = b""
        self._pos = 0  # bytes before it are walked
        self._scan = 0  # where the next search starts
        self._state = _DELIMITER
        self._head = b""
        self._skip = False
        self._data = hashlib.sha256()
        self._size = 0
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        if self._broken or not chunk:
            return
        if self._pos >= len(self._buffer):
            self._buffer = bytes(chunk)
        else:
            self._buffer = self._buffer[self._pos :] + chunk
        self._scan = max(0, self._scan - self._pos)
        self._pos = 0
        try:
            self._walk()
        except _Malformed:
            self._broken = True
            self._buffer = b""
            self._pos = self._scan = 0

    def digest(self) -> bytes | None:
        if self._broken or self._state != _EPILOGUE:
            return None
        # The epilogue counts: Django reads a part from headers found after the close.
        rest = memoryview(self._buffer)[self._pos :]
        data = self._data.copy()
        data.update(rest)
        records = self._records.copy()
        records.update(b"e" + (self._size + len(rest)).to_bytes(8, "big") + data.digest())
        return records.digest()

    def _take(self, start: int, end: int) -> None:
        if not self._skip:
            self._data.update(memoryview(self._buffer)[start:end])
            self._size += end - start

    def _end_part(self) -> None:
        if not self._skip:
            self._records.update(self._head + self._size.to_bytes(8, "big") + self._data.digest())
        self._data = hashlib.sha256()
        self._size = 0
        self._skip = False

    def _walk(self) -> None:
        # Every "--boundary" in the body must be a delimiter: at the start, or after
        # CRLF, and followed by CRLF or "--". Django splits the body at any of them.
        buf, dash = self._buffer, self._dash
        pos = self._pos
        while True:
            if self._state == _DELIMITER:
                after = pos + len(dash)
                if len(buf) < after + 2:
                    break
                if not buf.startswith(dash, pos):
                    raise _Malformed
                tail = buf[after : after + 2]
                if tail == b"\r\n":
                    self._state = _HEADERS
                    pos = self._scan = after
                elif tail == b"--":
                    self._state = _EPILOGUE
                    pos = self._scan = after + 2
                else:
                    raise _Malformed
            elif self._state == _HEADERS:
                # pos is at the CRLF after the delimiter, where Django starts to look.
                limit = pos + _PART_HEADERS_MAX
                end = buf.find(b"\r\n\r\n", max(pos, self._scan - 3), limit)
                if end < 0:
                    if len(buf) >= limit:
                        raise _Malformed
                    self._scan = len(buf)
                    break
                if buf.find(dash, pos, end) >= 0:
                    raise _Malformed
                head = _part_head(buf[pos + 2 : end])
                self._head = head.record()
                self._skip = head.name == _CSRF and head.filename is None
                self._state = _DATA
                pos = self._scan = end + 4
            elif self._state == _DATA:
                found = buf.find(dash, self._scan)
                if found < 0:
                    # Hold back what may be the CRLF and the start of a delimiter.
                    cut = len(buf) - len(dash) - 1
                    if cut > pos:
                        self._take(pos, cut)
                        pos = cut
                    self._scan = max(pos, len(buf) - len(dash) + 1)
                    break
                if found - 2 < pos or buf[found - 2 : found] != b"\r\n":
                    raise _Malformed
                self._take(pos, found - 2)
                self._end_part()
                self._state = _DELIMITER
                pos = found
            else:
                if buf.find(dash, self._scan) >= 0:
                    raise _Malformed
                cut = len(buf) - len(dash) + 1
                if cut > pos:
                    self._take(pos, cut)
                    pos = cut
                self._scan = pos
                break
        self._pos = pos


def form_data_digest(chunks: Iterable[bytes], boundary: bytes) -> bytes | None:
    """:class:`FormDataDigest` of a body given as an iterable of byte chunks."""
    walker = FormDataDigest(boundary)
    for chunk in chunks:
        walker.feed(chunk)
    return walker.digest()


def _boundary(content_type: str) -> bytes | None:
    """The boundary of a multipart ``Content-Type``, if Django's parser accepts it."""
    if not content_type.startswith("multipart/") or not content_type.isascii():
        return None
    try:
        boundary = parse_header_parameters(content_type)[1].get("boundary")
    except ValueError:
        return None
    if not boundary or not _BOUNDARY_RE.fullmatch(boundary):
        return None
    return boundary.encode("ascii")


def _media_type(content_type: str) -> str:
    try:
        return parse_header_parameters(content_type)[0]
    except ValueError:
        return ""


# -- the request -----------------------------------------------------------------------


def _without_csrf_pairs(body: bytes) -> bytes:
    """An urlencoded body without its ``csrfmiddlewaretoken`` pairs, the rest as sent."""
    if _CSRF not in body:
        return body
    pairs = body.split(b"&")
    return b"&".join(p for p in pairs if p != _CSRF and not p.startswith(_CSRF + b"="))


def _parsed_form(request: HttpRequest) -> bytes:
    """A digest of the form as Django parsed it: fields, then files, in their order."""
    digest = hashlib.sha256(b"parsed form\n")
    for name, values in request.POST.lists():
        if name == CSRF_FIELD:
            continue
        for value in values:
            digest.update(b"f" + _frame(_text(name)) + _frame(_text(value)))
    for name, uploads in request.FILES.lists():
        for upload in uploads:
            content = hashlib.sha256()
            size = 0
            for chunk in upload.chunks():
                content.update(chunk)
                size += len(chunk)
            upload.seek(0)
            content_type = upload.content_type
            digest.update(
                b"u"
                + _frame(_text(name))
                + _frame(_text(upload.name or ""))
                + _optional(None if content_type is None else _text(content_type))
                + size.to_bytes(8, "big")
                + content.digest()
            )
    return digest.digest()


def request_body(request: HttpRequest) -> bytes:
    """The raw body, or a stable digest of the parsed form when the raw bytes were
    already consumed by a multipart parser before the app saw the request (the
    ``csrfmiddlewaretoken`` field left out)."""
    try:
        return request.body
    except RequestDataTooBig as exc:
        raise BodyTooLarge(str(exc)) from exc
    except RawPostDataException:
        return _parsed_form(request)


def _content_type_without_boundary(value: str) -> bytes:
    media_type, params = parse_header_parameters(value)
    kept = (_frame(_text(k)) + _frame(_text(v)) for k, v in params.items() if k != "boundary")
    return b"m" + _frame(_text(media_type)) + b"".join(kept)


def _form_fingerprint(
    kind: bytes, request: HttpRequest, header_meta: Iterable[str], body_digest: bytes
) -> str:
    # Starts with NUL, which no method does: never the bytes of a raw fingerprint.
    digest = hashlib.sha256(b"\x00" + kind + b"\x00")
    digest.update(_frame(_text(request.method or "")))
    digest.update(_frame(_text(request.get_full_path())))
    for name in header_meta:
        value = request.META.get(name, "")
        if name == "CONTENT_TYPE" and _boundary(value) is not None:
            digest.update(_frame(_content_type_without_boundary(value)))
        else:
            digest.update(_frame(b"r" + _text(value)))
    digest.update(body_digest)
    return digest.hexdigest()


def _raw_prefix(request: HttpRequest, header_meta: Iterable[str]) -> Any:
    """The raw formula's SHA-256, fed with everything before the body."""
    digest = hashlib.sha256()
    digest.update(_text(request.method or ""))
    digest.update(b"\n")
    digest.update(_text(request.get_full_path()))
    for name in header_meta:
        digest.update(b"\n")
        digest.update(_text(request.META.get(name, "")))
    digest.update(b"\n")
    return digest


#: Where :func:`stream_form_data` leaves the fingerprint of a body it streamed.
_STREAMED_ATTR = "_idempotency_streamed"
#: Where :func:`stream_unread_input` keeps a chunked WSGI body it read.
_SPOOLED_ATTR = "_idempotency_spooled_input"
#: How much of a streamed body is read at a time.
STREAM_CHUNK = 64 * 1024


def _unread_input(request: HttpRequest) -> Any:
    """The WSGI input of a body that Django will not read, or None.

    A WSGI server that takes a chunked body (gunicorn) passes it with no
    ``CONTENT_LENGTH`` and ``wsgi.input_terminated`` set. Django reads a body only
    up to ``CONTENT_LENGTH``, so to Django, and to the view, such a body is empty.
    """
    environ = getattr(request, "environ", None)
    if not isinstance(environ, dict) or not environ.get("wsgi.input_terminated"):
        return None
    if environ.get("CONTENT_LENGTH") not in (None, ""):
        return None
    return environ.get("wsgi.input")


def stream_unread_input(request: HttpRequest, header_meta: Iterable[str]) -> bool:
    """Fingerprint a chunked WSGI body that Django does not read, by its bytes as sent.

    Without this the fingerprint would be that of an empty body, and two requests
    under one key with different chunked bodies would not mismatch. The bytes are
    hashed as they stream, in chunks of :data:`STREAM_CHUNK`, and kept in a
    ``SpooledTemporaryFile`` (in memory up to ``FILE_UPLOAD_MAX_MEMORY_SIZE``, then
    in ``FILE_UPLOAD_TEMP_DIR``) that takes the place of ``wsgi.input``: Django
    still sees an empty body, as without the key, and a view that reads
    ``request.environ["wsgi.input"]`` itself still gets every byte.

    Returns whether there was such a body.
    """
    source = _unread_input(request)
    if source is None:
        return False
    header_meta = tuple(header_meta)
    streamed = request.__dict__.get(_STREAMED_ATTR)
    if streamed is not None and streamed[0] == header_meta:
        return True
    raw = _raw_prefix(request, header_meta)
    spooled = request.__dict__.get(_SPOOLED_ATTR)
    if spooled is None:
        # It outlives this function: it becomes the request's WSGI input.
        keep = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE,
            suffix=".upload",
            dir=settings.FILE_UPLOAD_TEMP_DIR,
        )
        while chunk := source.read(STREAM_CHUNK):
            raw.update(chunk)
            keep.write(chunk)
        keep.seek(0)
        request.environ["wsgi.input"] = keep  # type: ignore[attr-defined]
        request.__dict__[_SPOOLED_ATTR] = keep
    else:
        # Other headers count this time: hash the kept bytes again, and rewind them.
        position = spooled.tell()
        spooled.seek(0)
        while chunk := spooled.read(STREAM_CHUNK):
            raw.update(chunk)
        spooled.seek(position)
    request.__dict__[_STREAMED_ATTR] = (header_meta, raw.hexdigest())
    return True


def stream_form_data(request: HttpRequest, header_meta: Iterable[str]) -> bool:
    """Fingerprint a ``multipart/form-data`` body as it streams, keeping it for Django.

    The body is read in chunks of :data:`STREAM_CHUNK` bytes, hashed by its parts
    (:class:`FormDataDigest`) and by its bytes (for a body that is not well-formed),
    and kept where Django's own parser will read it: the ASGI handler's spooled
    file, rewound; or, under WSGI, a ``SpooledTemporaryFile`` that spills to
    ``FILE_UPLOAD_TEMP_DIR`` past ``FILE_UPLOAD_MAX_MEMORY_SIZE``, as Django's
    upload handlers do. The view then parses ``request.POST`` and
    ``request.FILES`` as it would without the key, with Django's limits. Nothing
    is held in memory but a chunk and a part's headers.

    Returns whether the body was streamed: False for other bodies, and for a body
    that something already read. A chunked WSGI body, which Django does not parse,
    goes to :func:`stream_unread_input` instead.
    """
    header_meta = tuple(header_meta)
    if stream_unread_input(request, header_meta):
        return True
    streamed = request.__dict__.get(_STREAMED_ATTR)
    if streamed is not None and streamed[0] == header_meta:
        return True  # already streamed, for these headers
    if "_body" in request.__dict__ or request._read_started:  # type: ignore[attr-defined]
        return False
    content_type = request.META.get("CONTENT_TYPE", "")
    if _media_type(content_type) != FORM_DATA:
        return False
    header_meta = tuple(header_meta)
    boundary = _boundary(content_type)
    walker = FormDataDigest(boundary) if boundary is not None else None
    raw = _raw_prefix(request, header_meta)
    source: Any = request._stream
    rewind = bool(getattr(source, "seekable", lambda: False)())
    if rewind:
        start = source.tell()
        keep = None
    else:
        # It outlives this function: it becomes the request's stream.
        keep = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE,
            suffix=".upload",
            dir=settings.FILE_UPLOAD_TEMP_DIR,
        )
    while True:
        chunk = source.read(STREAM_CHUNK)
        if not chunk:
            break
        raw.update(chunk)
        if walker is not None:
            walker.feed(chunk)
        if keep is not None:
            keep.write(chunk)
    if keep is not None:
        keep.seek(0)
        request._stream = keep  # type: ignore[assignment]
    else:
        source.seek(start)
    parts = walker.digest() if walker is not None else None
    if parts is not None:
        fingerprint = _form_fingerprint(b"multipart/form-data", request, header_meta, parts)
    else:
        fingerprint = raw.hexdigest()
    request.__dict__[_STREAMED_ATTR] = (header_meta, fingerprint)
    return True


def keep_body(request: HttpRequest, header_meta: Iterable[str], *, stream: bool = True) -> None:
    """Make the body fingerprintable after later code parses it as a stream (a CSRF
    check reading ``request.POST``, DRF's parsers): stream a multipart body
    (:func:`stream_form_data`, when ``stream``), else read the body into memory as
    Django does. A body Django would refuse to read is left to the fingerprint,
    which answers 413."""
    if stream and stream_form_data(request, header_meta):
        return
    try:
        request.body  # noqa: B018
    except (RequestDataTooBig, RawPostDataException):
        pass


def _raw_fingerprint(request: HttpRequest, header_meta: Iterable[str], body: bytes) -> str:
    digest = _raw_prefix(request, header_meta)
    digest.update(body)
    return str(digest.hexdigest())


def default_fingerprint(request: HttpRequest, header_meta: Iterable[str]) -> str:
    """SHA-256 over the method, the full path with its query string as sent, the
    values of ``FINGERPRINT_HEADERS`` (``header_meta``: their ``META`` names) and
    the body.

    The body counts as sent, except for forms: a ``multipart/form-data`` body by
    its parts (:class:`FormDataDigest`), with the ``boundary`` parameter left out
    of ``Content-Type``; an ``application/x-www-form-urlencoded`` body without its
    ``csrfmiddlewaretoken`` pairs. A multipart body that is not well-formed counts
    as sent, boundary and all; so does a chunked body under WSGI, which Django
    does not read (:func:`stream_unread_input`).
    """
    header_meta = tuple(header_meta)
    if stream_unread_input(request, header_meta):
        streamed = request.__dict__[_STREAMED_ATTR]
    else:
        streamed = request.__dict__.get(_STREAMED_ATTR)
        if streamed is None and stream_form_data(request, header_meta):
            streamed = request.__dict__[_STREAMED_ATTR]
    if streamed is not None and streamed[0] == header_meta:
        return str(streamed[1])
    try:
        body = request.body
    except RequestDataTooBig as exc:
        raise BodyTooLarge(str(exc)) from exc
    except RawPostDataException:
        return _form_fingerprint(b"parsed form", request, header_meta, _parsed_form(request))
    content_type = request.META.get("CONTENT_TYPE", "")
    media_type = _media_type(content_type)
    if media_type == FORM_DATA:
        boundary = _boundary(content_type)
        # Today the body is in memory; the walker takes any iterable of chunks.
        parts = None if boundary is None else form_data_digest((body,), boundary)
        if parts is not None:
            return _form_fingerprint(b"multipart/form-data", request, header_meta, parts)
    elif media_type == URLENCODED:
        body = _without_csrf_pairs(body)
    return _raw_fingerprint(request, header_meta, body)


def canonical_json(fields: Iterable[str] | None = None) -> Callable[[Any], str]:
    """A ``fingerprint_func`` that compares JSON bodies by meaning, not by bytes.

    Key order and whitespace no longer matter; with ``fields``, only those
    top-level fields count. A body that is not a JSON object is fingerprinted
    by its bytes. Method and path always count.
    """
    wanted = None if fields is None else frozenset(fields)

    def fingerprint(request: Any) -> str:
        http_request: HttpRequest = getattr(request, "_request", request)
        body = request_body(http_request)
        digest = hashlib.sha256()
        digest.update(_text(http_request.method or "") + b"\n")
        digest.update(_text(http_request.get_full_path()) + b"\n")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            if wanted is not None:
                data = {k: v for k, v in data.items() if k in wanted}
            digest.update(b"json\n")
            digest.update(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())
        else:
            digest.update(b"raw\n")
            digest.update(body)
        return digest.hexdigest()

    return fingerprint
