"""facap_io's shared rules."""

from __future__ import annotations

from facap_io.errors import first_line


def test_first_line_of_an_error_with_an_empty_message_is_its_type():
    # `str(error).splitlines()[0]` raised IndexError on an empty message; the shared rule names the type
    assert first_line(OSError()) == "OSError"
    assert first_line(ValueError("one\ntwo")) == "one"
