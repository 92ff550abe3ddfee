"""Connecting to Ray: Ray's token files made owner-only, and the single-machine mode of a
local Ray (tests/integration/test_listening.py checks its sockets)."""
import logging
import os
import stat

import pytest

from raystream._runtime.control import connect


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME of the test's own, with no RAY_AUTH_TOKEN_PATH."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    return tmp_path


def token_file(folder, mode: int):
    path = folder / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not-a-real-token")
    path.chmod(mode)
    return path


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_token_file_ray_wrote_0644_is_made_0600_and_said_at_info(home, caplog):
    path = token_file(home, 0o644)
    with caplog.at_level(logging.INFO, logger="raystream"):
        connect.protect_token_files()
    assert mode_of(path) == 0o600
    assert f"made Ray's token file {path} owner-only (mode 0600, was 0644)" in caplog.text


def test_use_cluster_token_protects_the_token_file_and_the_one_ray_auth_token_path_names(home, monkeypatch):
    default = token_file(home, 0o664)
    named = token_file(home / "elsewhere", 0o640)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # nothing else of Ray's is touched
    assert connect.use_cluster_token() is False
    assert mode_of(default) == 0o600 and mode_of(named) == 0o600


def test_an_owner_only_token_file_and_no_token_file_are_left_alone(home, caplog):
    with caplog.at_level(logging.INFO, logger="raystream"):
        connect.protect_token_files()  # none there
        path = token_file(home, 0o400)
        connect.protect_token_files()
    assert mode_of(path) == 0o400 and caplog.text == ""


def test_a_token_file_of_another_user_is_named_in_a_warning_and_left_alone(home, monkeypatch, caplog):
    path = token_file(home, 0o644)
    monkeypatch.setattr(connect.os, "geteuid", lambda: os.stat(path).st_uid + 1)
    with caplog.at_level(logging.INFO, logger="raystream"):
        connect.protect_token_files()
    assert mode_of(path) == 0o644
    assert caplog.records[0].levelno == logging.WARNING
    assert f"Ray's token file {path} can be read by other users (mode 0644) and belongs to another user: " \
           f"its owner should run `chmod 600 {path}`" in caplog.text


def test_a_token_file_that_cannot_be_changed_is_named_in_a_warning(home, monkeypatch, caplog):
    path = token_file(home, 0o644)

    def refuse(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(connect.os, "chmod", refuse)
    with caplog.at_level(logging.INFO, logger="raystream"):
        connect.protect_token_files()
    assert caplog.records[0].levelno == logging.WARNING
    assert f"could not be made owner-only (read-only file system): run `chmod 600 {path}`" in caplog.text
