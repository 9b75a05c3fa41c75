"""Id <-> file name mapping: reversible, canonical, safe on every platform."""

from __future__ import annotations

import pytest

from connectome_storage.errors import InvalidKeyError
from connectome_storage.naming import MAX_NAME_BYTES, check_id, decode_name, encode_name


@pytest.mark.parametrize(
    ("identifier", "name"),
    [
        ("conv_001", "conv_001"),
        ("a-b.c", "a-b.c"),
        ("a/b", "a%2Fb"),
        ("100%", "100%25"),
        ("with space", "with%20space"),
        (".", "%2E"),
        ("..", "%2E%2E"),
        (".hidden", "%2Ehidden"),
        ("trailing.", "trailing%2E"),
        ("../../etc/passwd", "%2E.%2F..%2Fetc%2Fpasswd"),
        ("CON", "%43ON"),
        ("con.txt", "%63on.txt"),
        ("LPT9", "%4CPT9"),
        ("CONSOLE", "CONSOLE"),
        ("é", "%C3%A9"),
        ("🙂", "%F0%9F%99%82"),
    ],
)
def test_encoding_examples(identifier: str, name: str) -> None:
    assert encode_name(identifier) == name
    assert decode_name(name) == identifier


@pytest.mark.parametrize("stray", ["%41", "%2f", "%", "%G1", "%C3", "a%2", "", "CON", ".x", "a b", "%FF"])
def test_names_encode_name_would_not_produce_are_not_ids(stray: str) -> None:
    assert decode_name(stray) is None


@pytest.mark.parametrize("identifier", ["x" * MAX_NAME_BYTES, "é" * (MAX_NAME_BYTES // 6)])
def test_longest_accepted_ids(identifier: str) -> None:
    assert check_id(identifier, "id") == identifier
    assert len(encode_name(identifier) + ".json") <= 255


@pytest.mark.parametrize(
    "bad", ["", "\x00", "x" * (MAX_NAME_BYTES + 1), "é" * (MAX_NAME_BYTES // 6 + 1), "\udc80", 1, None]
)
def test_unusable_ids(bad: object) -> None:
    with pytest.raises(InvalidKeyError, match="conversation_id"):
        check_id(bad, "conversation_id")


def test_every_encoded_name_is_a_single_safe_path_component() -> None:
    samples = ["/", "\\", ":", "*", "?", '"', "<", ">", "|", "\t", "\n", "..", "~", "AUX", "nul"]
    for identifier in [*samples, "".join(samples)]:
        name = encode_name(identifier)
        assert set(name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-%")
        assert not name.startswith(".") and not name.endswith(".")
        assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL"}
        assert decode_name(name) == identifier
