"""tunnel.ops.log: JSON lines off a terminal, level filtering, and redaction of secret-looking keys."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from tunnel.ops.log import REDACTED, configure_logging, is_secret_key


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()


def test_json_lines_when_not_a_terminal():
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream)
    structlog.get_logger().info("child sa up", child="lan", spi_in="c1a2b3c4")
    record = json.loads(stream.getvalue())
    assert record["event"] == "child sa up" and record["level"] == "info" and record["spi_in"] == "c1a2b3c4"
    assert "timestamp" in record


def test_level_filters():
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    log = structlog.get_logger()
    log.info("quiet")
    log.warning("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_secrets_redacted_also_nested():
    stream = io.StringIO()
    configure_logging("debug", "json", stream=stream)
    structlog.get_logger().debug("keys", psk=b"hunter2", sk_ei="aa" * 16, keymat="bb" * 8, enc_key="cc",
                                 sa={"spi": 1, "secret": "dd", "inner": [{"integ_key": "ee"}]},
                                 keyingtries=3, monkey="ok")
    text = stream.getvalue()
    for secret in ("hunter2", "aa" * 16, "bb" * 8, '"cc"', '"dd"', '"ee"'):
        assert secret not in text
    record = json.loads(text)
    assert record["psk"] == record["sk_ei"] == record["keymat"] == record["enc_key"] == REDACTED
    assert record["sa"]["spi"] == 1 and record["sa"]["inner"][0]["integ_key"] == REDACTED
    assert record["keyingtries"] == 3 and record["monkey"] == "ok"


def test_console_format():
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    structlog.get_logger().info("hello", psk="x")
    assert "hello" in stream.getvalue() and REDACTED in stream.getvalue()


@pytest.mark.parametrize("name, secret", [
    ("psk", True), ("PSK", True), ("secret", True), ("sk_ai", True), ("skeyseed", True), ("keymat", True),
    ("key", True), ("keys", True), ("auth_key", True), ("spi", False), ("keyingtries", False), ("event", False),
])
def test_secret_key_names(name, secret):
    assert is_secret_key(name) is secret


def test_bad_arguments():
    with pytest.raises(ValueError):
        configure_logging("loud")
    with pytest.raises(ValueError):
        configure_logging("info", "xml")


@pytest.fixture
def command_line(monkeypatch):
    from tunnel.ops import log
    monkeypatch.setattr(log, "_command_line", {"level": None, "format": None})
    return log


def test_command_line_flags_win_over_the_file(command_line):
    """`espgw run --log-level error --log-format console`: the daemon configures logging from the
    file again (at start, on reload); the flags must survive that."""
    assert command_line.effective_settings(None, None) == ("info", "auto")
    assert command_line.effective_settings("debug", "json") == ("debug", "json")
    command_line.set_command_line("error", "console")
    assert command_line.effective_settings("debug", "json") == ("error", "console")
    stream = io.StringIO()
    command_line.configure_from_config("debug", "json", stream=stream)
    log = structlog.get_logger()
    log.info("quiet")
    log.error("loud")
    text = stream.getvalue()
    assert "quiet" not in text and "loud" in text and not text.startswith("{")
    command_line.set_command_line(None, "json")  # only the format given: the file's level applies
    assert command_line.effective_settings("warning", "console") == ("warning", "json")
    with pytest.raises(ValueError):
        command_line.set_command_line("loud")


def test_one_event_per_sa_happening():
    """The IKE core logs ike_sa_established/child_sa_established/..._down and the daemon does not
    log them again under other names (issue 18 found child_sa_established and child_sa.up); a failed
    negotiation is the daemon's negotiation_failed (from the core's NegotiationFailed event) only."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[3]
    gateway = (root / "tunnel" / "daemon" / "gateway.py").read_text()
    import re
    for duplicate in ("child_sa.up", "child_sa.down", "ike_sa.up", "ike_sa.down"):  # as log events (the
        assert not re.search(r'log\.\w+\(\s*"' + re.escape(duplicate) + '"', gateway)  # journal may name them)
    assert '"negotiation_failed"' in gateway
    core = "".join((root / "ike" / "tasks" / name).read_text() for name in ("ike_init.py", "ike_auth.py",
                                                                            "child_create.py"))
    for duplicate in ('"ike_sa_init_failed"', '"ike_auth_failed"', '"child_sa_failed"'):
        assert duplicate not in core
