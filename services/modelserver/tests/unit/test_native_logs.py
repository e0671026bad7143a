"""Native stderr lines become JSON log lines (parsing, and the pipe in a subprocess)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

from modelserver.observability.native_logs import parse_line


def test_glog_lines_keep_their_level_message_and_source() -> None:
    line = (
        "W0000 00:00:1795527737.024594   19685 local_rendezvous.cc:412] Local "
        "rendezvous is aborting with status: INVALID_ARGUMENT"
    )
    level, message, source = parse_line(line, logging.INFO)
    assert level == logging.WARNING
    assert message == "Local rendezvous is aborting with status: INVALID_ARGUMENT"
    assert source == "local_rendezvous.cc:412"
    assert parse_line("E1124 13:06:28.384581 16261 add_port.cc:83] no", 0)[0] == (
        logging.ERROR
    )
    assert parse_line("F0000 00:00:1.0 1 x.cc:1] dead", 0)[0] == logging.CRITICAL


def test_other_lines_continue_the_previous_level() -> None:
    assert parse_line("\t [[{{node dense/Relu}}]]", logging.ERROR) == (
        logging.ERROR,
        "\t [[{{node dense/Relu}}]]",
        None,
    )


def _run_python(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (dedented) in a fresh interpreter; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_writes_to_descriptor_2_are_logged_as_json_lines() -> None:
    done = _run_python(
        """
        import os, sys
        from modelserver.observability import native_logs
        from servekit_protocol.logs import configure_logging
        native = native_logs.capture()
        configure_logging("INFO", stream=native.stream)
        os.write(2, b"I0000 00:00:1.5 42 cpu_feature_guard.cc:227] optimized\\n")
        os.write(2, b"W0000 00:00:1.6 42 rendezvous.cc:412] aborting\\n\\t [[node]]\\n")
        os.write(2, b"no newline at the end")
        print("python's own stderr", file=sys.stderr)
        native.close()
        os.write(2, b"after close\\n")
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1] == "after close"
    assert "python's own stderr" in lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    native = [record for record in records if record["logger"] == "native"]
    assert [(r["level"], r["message"]) for r in native] == [
        ("INFO", "optimized"),
        ("WARNING", "aborting"),
        ("WARNING", "\t [[node]]"),
        ("WARNING", "no newline at the end"),
    ]
    assert native[0]["source"] == "cpu_feature_guard.cc:227"
    assert len(records) + 2 == len(lines)


def test_a_crash_still_leaves_its_traceback_on_the_original_stderr() -> None:
    done = _run_python(
        """
        import faulthandler
        from modelserver.observability import native_logs
        native_logs.capture()
        faulthandler._sigsegv()
        """
    )
    assert done.returncode != 0
    assert "Fatal Python error: Segmentation fault" in done.stderr
