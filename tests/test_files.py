"""Specification of the bounded reader of input files (``fournines._files``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fournines import ConfigurationError
from fournines._files import MAX_DEPTH, json_document, read_text, yaml_documents


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_yaml_nested_to_the_limit_is_read() -> None:
    [document] = yaml_documents(nested(MAX_DEPTH))
    assert isinstance(document, list)


def test_yaml_one_level_past_the_limit_is_refused_with_its_position() -> None:
    with pytest.raises(ConfigurationError,
                       match=r"^nested deeper than 64 levels at line 1, column 65 "):
        yaml_documents(nested(MAX_DEPTH + 1))


def test_yaml_a_million_levels_deep_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(ConfigurationError, match="nested deeper than 64 levels"):
        yaml_documents("a:\n  b: " + nested(1_000_000))


def test_broken_yaml_is_one_line_saying_so() -> None:
    with pytest.raises(ConfigurationError) as info:
        yaml_documents("a: [\n")
    assert str(info.value).startswith("not valid YAML: ")
    assert "\n" not in str(info.value)


def test_every_non_empty_yaml_document_is_returned() -> None:
    assert yaml_documents("a: 1\n---\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]


def test_json_nested_to_the_limit_is_read_and_past_it_refused() -> None:
    assert isinstance(json_document(nested(MAX_DEPTH)), list)
    with pytest.raises(ConfigurationError, match=r"^nested deeper than 64 levels at line 1"):
        json_document(nested(MAX_DEPTH + 1))


def test_json_brackets_inside_strings_do_not_count() -> None:
    text = '{"a": "' + "[" * 500 + '\\"[[[", "b": [1]}'
    assert json_document(text)["b"] == [1]


def test_broken_json_is_one_line_saying_so() -> None:
    with pytest.raises(ConfigurationError, match=r"^not valid JSON: "):
        json_document("{not json")


def test_a_file_over_the_byte_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x" * 11)
    assert read_text(path, max_bytes=11) == "x" * 11
    with pytest.raises(ConfigurationError, match=r"^larger than 10 bytes"):
        read_text(path, max_bytes=10)


def test_a_missing_or_binary_file_is_named_by_its_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^cannot read: No such file"):
        read_text(tmp_path / "missing")
    (tmp_path / "binary").write_bytes(b"ok\xff")
    with pytest.raises(ConfigurationError, match=r"^not UTF-8 text \(byte 2\)"):
        read_text(tmp_path / "binary")


def laughs(levels: int) -> str:
    """Nine aliases of nine aliases of ...: a few lines, 9 ** levels values expanded."""
    anchors = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        anchors.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "laughs: [" + ", ".join(anchors) + "]\n"


def test_yaml_whose_aliases_expand_past_the_limit_is_refused() -> None:
    with pytest.raises(ConfigurationError,
                       match=r"^more than 1000000 values once its aliases are expanded"):
        yaml_documents(laughs(9))


def test_yaml_aliases_that_expand_within_the_limit_are_read() -> None:
    [document] = yaml_documents(laughs(3) + "---\n" + laughs(3))[:1]
    assert len(document["laughs"][2]) == 9
