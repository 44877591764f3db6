import pytest

from idempotency.keys import InvalidKey, parse_header, validate_key


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("abc", "abc"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"abc"', "abc"),
        ('  "abc"  ', "abc"),
        ("  abc ", "abc"),
        ('"a,b"', "a,b"),
        ('"a\\"b"', 'a"b'),
        ('"a\\\\b"', "a\\b"),
        ('"with space"', "with space"),
        ("x" * 255, "x" * 255),
        ("~!@#$%^&*()_+=-`{}[]|:;'<>.?/", "~!@#$%^&*()_+=-`{}[]|:;'<>.?/"),
    ],
)
def test_valid_keys(value: str, key: str) -> None:
    assert parse_header(value, 255) == key


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ('""', "empty"),
        ("x" * 256, "longer than 255"),
        ("x" * 10240, "longer than 255"),
        ('"' + "x" * 256 + '"', "longer than 255"),
        ("a,b", "more than once"),
        ("abc, abc", "more than once"),
        ('"abc", "abc"', "more than once"),
        ('"abc" x', "followed by other characters"),
        ('"abc";p=1', "has parameters"),
        ('"abc" ;p', "has parameters"),
        ('"abc', "no closing quote"),
        ('"a\\b"', "escaped"),
        ('"abc\\', "escaped"),
        ("caf\u00e9", "printable ASCII"),
        ("tab\there", "printable ASCII"),
        ("nul\x00", "printable ASCII"),
        ("del\x7f", "printable ASCII"),
        ("\u2603", "printable ASCII"),
    ],
)
def test_invalid_keys(value: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason):
        parse_header(value, 255)


def test_max_length_is_the_unquoted_length() -> None:
    # Ten characters once unescaped, though the field value holds more.
    assert parse_header('"\\"\\"\\"\\"\\"abcde"', 10) == '"""""abcde'
    with pytest.raises(InvalidKey, match="longer than 9"):
        parse_header('"\\"\\"\\"\\"\\"abcde"', 9)


def test_validate_key_from_key_func() -> None:
    assert validate_key("evt_123", 255) == "evt_123"
    with pytest.raises(InvalidKey):
        validate_key("", 255)
    with pytest.raises(InvalidKey):
        validate_key("evt\n1", 255)
    with pytest.raises(InvalidKey):
        validate_key("e" * 20, 19)
