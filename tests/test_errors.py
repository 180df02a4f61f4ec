"""The wording of caught exceptions inside fastppo's one-line errors."""

from fastppo.errors import describe, first_line


def test_first_line_takes_the_first_non_blank_line():
    assert first_line(RuntimeError("\n  size mismatch for w  \nthe rest of torch's table")) \
        == "size mismatch for w"
    assert first_line(ValueError("")) == ""


def test_describe_names_the_type_and_the_first_line():
    assert describe(KeyError("missing")) == "KeyError: 'missing'"
    assert describe(RuntimeError("one\ntwo")) == "RuntimeError: one"
    assert describe(OSError()) == "OSError"
