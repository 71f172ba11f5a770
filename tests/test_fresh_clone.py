"""A fresh clone without the files that live beside the repository skips the tests that need them, with the
reason; CI, which has those files, fails instead of skipping."""

from __future__ import annotations

import pytest

import conftest


def test_missing_outside_files_skip_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=r"Fashion IQ files not found at .*absent .*CI provides it"):
        conftest.require_outside_file(tmp_path / "absent", "Fashion IQ files")


def test_missing_outside_files_fail_under_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="Fashion IQ files not found"):
        conftest.require_outside_file(tmp_path / "absent", "Fashion IQ files")


def test_present_outside_files_are_returned(tmp_path):
    assert conftest.require_outside_file(tmp_path, "a folder") == tmp_path

