"""Reading the key from the header (bare token or RFC 9651 sf-string) and validating it."""

from __future__ import annotations


class InvalidKey(ValueError):
    """The key cannot be used; the message says why and goes to the client."""


def _check(key: str, max_length: int) -> str:
    if not key:
        raise InvalidKey("The key is empty.")
    if len(key) > max_length:
        raise InvalidKey(f"The key is longer than {max_length} characters.")
    if not key.isascii() or not key.isprintable():
        raise InvalidKey("The key may only hold printable ASCII characters (0x20-0x7E).")
    return key


def validate_key(key: str, max_length: int) -> str:
    """Validate a key that came from somewhere other than the header (``key_func``)."""
    return _check(key, max_length)


def parse_header(value: str, max_length: int) -> str:
    """Return the key carried by one ``Idempotency-Key`` field value.

    A value that starts with ``"`` is an sf-string and is unquoted (``\\"`` and
    ``\\\\`` are its only escapes). Anything else is taken as a bare token, where an
    unquoted comma means a list or a repeated header, which is refused.
    """
    # An escaped key can be at most twice as long as the key, plus quotes and spaces.
    if len(value) > 2 * max_length + 16:
        raise InvalidKey(f"The key is longer than {max_length} characters.")
    if not value.isascii() or not value.isprintable():
        raise InvalidKey("The key may only hold printable ASCII characters (0x20-0x7E).")
    value = value.strip(" ")
    if not value.startswith('"'):
        if "," in value:
            raise InvalidKey(
                "The header holds a list or was sent more than once; send exactly one key."
            )
        return _check(value, max_length)

    chars: list[str] = []
    i, end = 1, len(value)
    while i < end:
        char = value[i]
        if char == "\\":
            if i + 1 >= end or value[i + 1] not in '"\\':
                raise InvalidKey('Only \\" and \\\\ may be escaped in a quoted key.')
            chars.append(value[i + 1])
            i += 2
        elif char == '"':
            rest = value[i + 1 :].strip(" ")
            if rest.startswith(","):
                raise InvalidKey(
                    "The header holds more than one value or was sent more than once; "
                    "send exactly one key."
                )
            if rest.startswith(";"):
                raise InvalidKey("The quoted key has parameters; send the key alone.")
            if rest:
                raise InvalidKey("The quoted key is followed by other characters.")
            return _check("".join(chars), max_length)
        else:
            chars.append(char)
            i += 1
    raise InvalidKey("The quoted key has no closing quote.")
