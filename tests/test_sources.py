"""Remote sources and plugins: size caps, SSRF refusals, and rows from other formats."""

from __future__ import annotations

import io
import json
import time

import pytest

from tests.receiver import file_server
from tests.services import free_port
from tunelab import conversations
from tunelab.plugins import Alpaca, ChatJsonl, PluginError, load
from tunelab.workers.cpu.sources import (
    SourceError,
    SourceUnavailable,
    check_address,
    fetch_http,
)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.csv",
        "http://10.1.2.3/x.csv",
        "http://[::1]/x.csv",
        "http://169.254.169.254/latest",
    ],
)
def test_private_and_loopback_addresses_are_refused_by_default(url: str) -> None:
    with pytest.raises(SourceError, match="private or loopback") as raised:
        check_address(url, allow_private=False)
    assert raised.value.problem_code == "source_refused"


def test_only_http_and_https_are_fetched() -> None:
    with pytest.raises(SourceError, match="Only http and https"):
        check_address("file:///etc/passwd", allow_private=True)


def test_a_fetch_streams_the_body_and_follows_http_redirects() -> None:
    routes = {"/a": (302, {"location": "/b"}, b""), "/b": (200, {}, b"question,answer\n")}
    with file_server(routes) as base:
        sink = io.BytesIO()
        size = fetch_http(f"{base}/a", sink, max_bytes=1 << 20, timeout_s=5, allow_private=True)
    assert (size, sink.getvalue()) == (16, b"question,answer\n")


def test_a_redirect_to_another_scheme_is_refused() -> None:
    with (
        file_server({"/a": (301, {"location": "file:///etc/passwd"}, b"")}) as base,
        pytest.raises(SourceError, match="Only http and https"),
    ):
        fetch_http(f"{base}/a", io.BytesIO(), max_bytes=100, timeout_s=5, allow_private=True)


def test_a_private_address_is_refused_even_when_reached_by_redirect() -> None:
    with file_server({}) as base, pytest.raises(SourceError, match="private or loopback"):
        fetch_http(f"{base}/a", io.BytesIO(), max_bytes=100, timeout_s=5, allow_private=False)


def test_a_source_over_the_cap_is_refused_as_soon_as_it_crosses_it() -> None:
    with (
        file_server({"/big": (200, {}, b"x" * 5000)}) as base,
        pytest.raises(SourceError, match="larger than") as raised,
    ):
        fetch_http(f"{base}/big", io.BytesIO(), max_bytes=1000, timeout_s=5, allow_private=True)
    assert raised.value.problem_code == "source_too_large"


def test_an_http_error_is_named() -> None:
    with file_server({}) as base, pytest.raises(SourceError, match="HTTP 404"):
        fetch_http(f"{base}/missing", io.BytesIO(), max_bytes=100, timeout_s=5, allow_private=True)


def served(data: bytes):  # type: ignore[no-untyped-def]
    return lambda uri: data


def test_alpaca_records_read_from_json_or_jsonl_join_instruction_and_input() -> None:
    records = [
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]
    as_json = list(Alpaca().rows({"uri": "x"}, served(json.dumps(records).encode())))
    as_lines = list(
        Alpaca().rows({"uri": "x"}, served("\n".join(json.dumps(r) for r in records).encode()))
    )
    assert as_json == as_lines == records
    assert [conversations.parse(r, Alpaca.format) for r in as_json] == [
        conversations.from_pair("Translate\n\nbonjour", "hello"),
        conversations.from_pair("Say hi", "hi"),
    ]


def test_chat_jsonl_keeps_the_whole_conversation() -> None:
    turns = [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "Capital of France?"),
        ("assistant", "Paris"),
    ]
    record = {"messages": [{"role": r, "content": c} for r, c in turns]}
    rows = list(ChatJsonl().rows({"uri": "x"}, served(json.dumps(record).encode() + b"\n")))
    assert [(m["role"], m["content"]) for m in conversations.parse(rows[0], "openai")] == turns


def test_chat_jsonl_names_a_line_that_is_not_json() -> None:
    with pytest.raises(PluginError) as raised:
        list(
            ChatJsonl().rows(
                {"uri": "x"},
                served(
                    b'{"messages": [{"role": "user", "content": "a"}, '
                    b'{"role": "assistant", "content": "b"}]}\n{oops\n'
                ),
            )
        )
    assert raised.value.details[0]["line"] == 2


def test_plugins_are_found_through_entry_points() -> None:
    assert isinstance(load("alpaca"), Alpaca) and isinstance(load("chat-jsonl"), ChatJsonl)
    with pytest.raises(PluginError, match="No dataset plugin named 'nope'"):
        load("nope")


def test_a_passing_failure_is_left_for_a_retry() -> None:
    with (
        file_server({"/busy": (503, {}, b"")}) as base,
        pytest.raises(SourceUnavailable, match="HTTP 503"),
    ):
        fetch_http(f"{base}/busy", io.BytesIO(), max_bytes=100, timeout_s=5, allow_private=True)
    with pytest.raises(SourceUnavailable, match="ConnectError"):
        fetch_http(
            f"http://127.0.0.1:{free_port()}/x",
            io.BytesIO(),
            max_bytes=100,
            timeout_s=5,
            allow_private=True,
        )


def test_a_download_past_its_total_deadline_is_stopped() -> None:
    from tunelab.workers.cpu.sources import _copy

    with pytest.raises(SourceError, match="too slowly") as raised:
        _copy(iter([b"a", b"b"]), io.BytesIO(), 100, "http://x", time.monotonic() - 1)
    assert raised.value.problem_code == "source_too_slow"


def test_a_plugin_file_that_is_not_utf8_is_named() -> None:
    with pytest.raises(PluginError, match="not UTF-8"):
        list(Alpaca().rows({"uri": "x"}, served("问题".encode("gbk"))))
