"""Property tests of the parsers that read what users send: whatever the bytes, the CSV
checker answers with its report and the plugin parsers with their own error, never with
an exception of something underneath (a decoder, a recursion limit, a parser)."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab import conversations
from tunelab.errors import BadRequest
from tunelab.functions.boundary import parse_json
from tunelab.plugins import Alpaca, ChatJsonl, PluginError
from tunelab.workers.cpu.convcheck import check_conversations
from tunelab.workers.cpu.csvcheck import check_file

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAPPING = {"question": "question", "answer": "answer"}

cell = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"])
    | st.sampled_from(['"', ",", "\n", "\r", "=", "+", "-", "@", "\t", "\x00", "问", "\ufeff"]),
    max_size=40,
)
header = st.sampled_from(["question,answer", "answer,question", "q,a", "question", ""])
csv_text = st.builds(
    lambda head, rows, sep: head + sep + sep.join(",".join(r) for r in rows),
    header,
    st.lists(st.lists(cell, min_size=0, max_size=4), max_size=30),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
encoded = st.builds(
    lambda text, codec: text.encode(codec, errors="replace"),
    csv_text,
    st.sampled_from(["utf-8", "utf-8-sig", "gbk", "latin-1", "utf-16"]),
)


def check(data: bytes) -> Any:
    tables: list[pa.Table] = []
    return check_file(lambda: io.BytesIO(data), MAPPING, tables.append, min_rows=1)


@FAST
@given(st.binary(max_size=4000) | encoded)
def test_the_csv_checker_reports_on_any_bytes_and_never_raises(data: bytes) -> None:
    report = check(data)
    assert report.ok or report.errors  # a verdict, with its reasons when it refuses


json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
record = st.fixed_dictionaries(
    {},
    optional={
        "instruction": json_value,
        "input": json_value,
        "output": json_value,
        "messages": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": st.sampled_from(["user", "assistant", "system", 3]),
                    "content": json_value,
                },
            )
            | json_value,
            max_size=5,
        ),
    },
)
plugin_file = (
    st.lists(record | json_value, max_size=6).map(
        lambda items: "\n".join(json.dumps(i) for i in items).encode()
    )
    | st.lists(record, max_size=6).map(lambda items: json.dumps(items).encode())
    | st.binary(max_size=300)
    | st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n)
)


@FAST
@given(plugin_file, st.sampled_from([Alpaca(), ChatJsonl()]))
def test_the_plugin_parsers_fail_only_with_their_own_error(data: bytes, plugin: Any) -> None:
    try:
        rows = list(plugin.rows({"uri": "x"}, lambda uri: data))
    except PluginError as exc:
        assert exc.message
    else:
        for row in rows:  # records, each then checked as a conversation or refused
            try:
                conversations.parse(row, plugin.format)
            except conversations.BadConversation as exc:
                assert exc.message


message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant", "asistant", 3]),
        "content": json_value,
    },
    optional={"weight": json_value},
)
conversation_file = st.lists(
    st.fixed_dictionaries({"messages": st.lists(message, max_size=5)}) | json_value, max_size=8
).map(lambda items: "\n".join(json.dumps(i) for i in items).encode()) | st.binary(max_size=300)


@FAST
@given(conversation_file, st.sampled_from(["json", "openai", "sharegpt", "alpaca"]))
def test_the_conversation_checker_reports_on_any_file_and_never_raises(
    data: bytes, fmt: str
) -> None:
    tables: list[pa.Table] = []
    report = check_conversations(lambda: io.BytesIO(data), fmt, tables.append, min_rows=1)
    assert report.ok or report.errors
    if report.ok:
        assert sum(t.num_rows for t in tables) == report.stats["rows"]


@FAST
@given(st.binary(max_size=2000) | json_value.map(lambda v: json.dumps(v).encode()))
def test_the_json_boundary_parses_or_refuses_with_a_bad_request(data: bytes) -> None:
    try:
        parse_json(data)
    except BadRequest as exc:
        assert exc.status == 400 and len(exc.message) <= 1100
