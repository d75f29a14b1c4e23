"""The catalogue of bad conversation and preference files, each through the ingestion
actor: the dataset's status, the problem's code, and the line and field it names."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.actors import drain
from tunelab.auth import ensure_workspace
from tunelab.context import Context
from tunelab.db.tables import Dataset
from tunelab.events.dataset import DatasetUploaded, DatasetUploadedData
from tunelab.store import key_from_uri, keys


def chat(*turns: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def good(i: int) -> dict[str, Any]:
    return chat(("user", f"What is {i} plus one?"), ("assistant", f"{i + 1}"))


def lines(*records: Any) -> bytes:
    """Eleven good conversations, then the records given (from line 12)."""
    out = [json.dumps(good(i)) for i in range(11)]
    out += [r if isinstance(r, str) else json.dumps(r) for r in records]
    return "\n".join(out).encode() + b"\n"


def ingest_bytes(
    ctx: Context,
    name: str,
    data: bytes,
    fmt: str = "json",
    validate: tuple[bytes, str] | None = None,
    mapping: dict[str, str] | None = None,
) -> Dataset:
    """Ingest `data` as the train split (and `validate`: its bytes and format)."""
    with ctx.db.session() as session:
        workspace = ensure_workspace(session, "acme")
        dataset = Dataset(
            workspace_id=workspace.id, name=name, metadata_={}, source={"type": "upload"}
        )
        session.add(dataset)
    files = {"train": (data, fmt), **({"validate": validate} if validate else {})}
    sources = {
        split: ctx.store.uri(ctx.store.put_bytes(keys.dataset_staging(dataset.id, split), b).key)
        for split, (b, _) in files.items()
    }
    ctx.bus.publish(
        DatasetUploaded(
            workspace=workspace.id,
            data=DatasetUploadedData(
                dataset_id=dataset.id,
                name=name,
                sources=sources,
                formats={split: f for split, (_, f) in files.items()},
                feature_mapping=mapping or {"question": "question", "answer": "answer"},
            ),
        )
    )
    drain(ctx)
    with ctx.db.session() as session:
        return session.get_one(Dataset, dataset.id)


OPENAI_BAD = [
    ("unknown role", chat(("user", "a"), ("asistant", "b")), "unknown_role", "messages[1].role"),
    (
        "empty content",
        chat(("user", "a"), ("assistant", "")),
        "empty_content",
        "messages[1].content",
    ),
    (
        "blank content",
        chat(("user", " \n"), ("assistant", "b")),
        "empty_content",
        "messages[0].content",
    ),
    (
        "two system messages",
        chat(("system", "s"), ("system", "t"), ("user", "a"), ("assistant", "b")),
        "two_system_messages",
        "messages[1]",
    ),
    (
        "system later",
        chat(("user", "a"), ("assistant", "b"), ("system", "s"), ("user", "c"), ("assistant", "d")),
        "system_not_first",
        "messages[2]",
    ),
    ("no assistant turn", chat(("system", "s"), ("user", "a")), "no_assistant_turn", None),
    ("no user turn", chat(("assistant", "b")), "no_user_turn", None),
    (
        "two user turns in a row",
        chat(("user", "a"), ("user", "b"), ("assistant", "c")),
        "wrong_role_order",
        "messages[1]",
    ),
    (
        "assistant first",
        chat(("assistant", "a"), ("user", "b"), ("assistant", "c")),
        "wrong_role_order",
        "messages[0]",
    ),
    (
        "ends on the user",
        chat(("user", "a"), ("assistant", "b"), ("user", "c")),
        "ends_on_user",
        "messages[2]",
    ),
    (
        "list content",
        chat(("user", ["a"]), ("assistant", "b")),
        "not_a_string",
        "messages[0].content",
    ),
    (
        "null content",
        chat(("user", "a"), ("assistant", None)),
        "not_a_string",
        "messages[1].content",
    ),
    (
        "NUL in content",
        chat(("user", "a\u0000b"), ("assistant", "c")),
        "binary_content",
        "messages[0].content",
    ),
    ("messages not a list", {"messages": "hello"}, "not_a_list", "messages"),
    ("no messages", {"prompt": "a", "messages": None}, "missing_field", "messages"),
    ("a message not an object", {"messages": ["hi"]}, "not_an_object", "messages[0]"),
    ("a record not an object", [1, 2], "not_an_object", None),
    (
        "weight two",
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "weight": 2},
            ]
        },
        "bad_weight",
        "messages[1].weight",
    ),
    (
        "weight on a user turn",
        {
            "messages": [
                {"role": "user", "content": "a", "weight": 1},
                {"role": "assistant", "content": "b"},
            ]
        },
        "bad_weight",
        "messages[0].weight",
    ),
    (
        "nothing to train",
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "weight": 0},
            ]
        },
        "nothing_to_train",
        None,
    ),
    (
        "tool calls",
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b", "tool_calls": [{}]},
            ]
        },
        "unsupported_feature",
        "messages[1].tool_calls",
    ),
    ("not JSON", '{"messages": [', "invalid_json", None),
]


@pytest.mark.parametrize(
    ("record", "code", "field"),
    [case[1:] for case in OPENAI_BAD],
    ids=[case[0] for case in OPENAI_BAD],
)
def test_a_bad_conversation_fails_naming_its_line_and_field(
    ctx: Context, record: Any, code: str, field: str | None
) -> None:
    dataset = ingest_bytes(ctx, "bad", lines(record))
    assert dataset.status == "failed"
    first = dataset.error["details"][0]
    assert (first["code"], first["line"], first.get("field")) == (code, 12, field), first
    assert first["message"].startswith("Line 12")


def test_a_misspelt_role_is_named_with_the_roles_there_are(ctx: Context) -> None:
    dataset = ingest_bytes(ctx, "typo", lines(chat(("user", "a"), ("asistant", "b"))))
    assert dataset.error["details"][0]["message"] == (
        "Line 12, messages[1].role: 'asistant' is not one of system, user, assistant "
        "(did you mean 'assistant'?)."
    )


OTHER_FORMATS_BAD = [
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
        "unknown_role",
        "conversations[1].from",
    ),
    (
        "sharegpt",
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "b"}]},
        "not_a_string",
        "conversations[0].value",
    ),
    ("alpaca", {"instruction": "a"}, "not_a_string", "output"),
    ("alpaca", {"instruction": "  ", "output": "b"}, "empty_content", "instruction"),
    ("alpaca", {"instruction": "a", "output": "b", "history": [["c"]]}, "not_a_list", "history[0]"),
]


@pytest.mark.parametrize(("fmt", "record", "code", "field"), OTHER_FORMATS_BAD)
def test_sharegpt_and_alpaca_problems_name_their_own_fields(
    ctx: Context, fmt: str, record: Any, code: str, field: str
) -> None:
    body = [json.dumps(record)] * 12
    dataset = ingest_bytes(ctx, f"bad-{fmt}", "\n".join(body).encode(), fmt=fmt)
    first = dataset.error["details"][0]
    assert (first["code"], first["line"], first.get("field")) == (code, 1, field), first


def test_a_line_that_is_not_utf8_is_named(ctx: Context) -> None:
    data = lines() + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'
    first = ingest_bytes(ctx, "latin1", data).error["details"][0]
    assert (first["code"], first["line"]) == ("encoding", 12)


def test_a_file_in_no_known_format_is_refused_at_its_first_line(ctx: Context) -> None:
    first = ingest_bytes(ctx, "odd", b'{"text": "a"}\n' * 12).error["details"][0]
    assert (first["code"], first["line"]) == ("unknown_format", 1)


def test_too_few_conversations_is_a_problem(ctx: Context) -> None:
    data = "\n".join(json.dumps(good(i)) for i in range(3)).encode()
    assert ingest_bytes(ctx, "few", data).error["details"][0]["code"] == "too_few_rows"


def stored(ctx: Context, dataset: Dataset) -> list[Any]:
    with ctx.store.open(key_from_uri(dataset.files["train"])) as data:
        table = pq.read_table(data)
    return table.column("messages").to_pylist()  # type: ignore[no-any-return]


def test_the_three_formats_store_the_same_conversations(ctx: Context) -> None:
    def openai(i: int) -> dict[str, Any]:
        return chat(
            ("system", "Be brief."),
            ("user", f"Hi {i}"),
            ("assistant", "Hello"),
            ("user", "Bye"),
            ("assistant", f"Bye {i}"),
        )

    def sharegpt(i: int) -> dict[str, Any]:
        turns = ["Hi", "Hello", "Bye", "Bye"]
        return {
            "system": "Be brief.",
            "conversations": [
                {
                    "from": "human" if k % 2 == 0 else "gpt",
                    "value": f"{t} {i}" if k in (0, 3) else t,
                }
                for k, t in enumerate(turns)
            ],
        }

    def alpaca(i: int) -> dict[str, Any]:
        return {
            "system": "Be brief.",
            "history": [[f"Hi {i}", "Hello"]],
            "instruction": "Bye",
            "input": "",
            "output": f"Bye {i}",
        }

    results = []
    for name, make in (("openai", openai), ("sharegpt", sharegpt), ("alpaca", alpaca)):
        data = "\n".join(json.dumps(make(i)) for i in range(12)).encode()
        dataset = ingest_bytes(ctx, name, data)
        assert dataset.status == "ready", dataset.error
        assert dataset.stats["train"]["format"] == name
        assert dataset.stats["train"]["turns"] == {
            "min": 2,
            "median": 2,
            "max": 2,
            "multi_turn": 12,
        }
        assert dataset.stats["train"]["tokens"]["conversation"]["min"] > 0
        results.append(stored(ctx, dataset))
    assert results[0] == results[1] == results[2]
    assert results[0][3] == [
        {"role": "system", "content": "Be brief.", "weight": None},
        {"role": "user", "content": "Hi 3", "weight": None},
        {"role": "assistant", "content": "Hello", "weight": None},
        {"role": "user", "content": "Bye", "weight": None},
        {"role": "assistant", "content": "Bye 3", "weight": None},
    ]


def test_a_json_array_and_weights_are_kept(ctx: Context) -> None:
    records = [
        {
            "messages": [
                {"role": "user", "content": f"a{i}"},
                {"role": "assistant", "content": "b", "weight": 0},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d", "weight": 1},
            ]
        }
        for i in range(12)
    ]
    dataset = ingest_bytes(ctx, "array", json.dumps(records, indent=1).encode())
    assert dataset.status == "ready", dataset.error
    assert [m["weight"] for m in stored(ctx, dataset)[0]] == [None, 0, None, 1]


def test_duplicates_are_dropped_and_overlong_conversations_are_warned_with_their_line(
    ctx: Context,
) -> None:
    long = chat(("user", "word " * 2000), ("assistant", "ok"))
    dataset = ingest_bytes(ctx, "long", lines(good(0), long))
    assert dataset.status == "ready", dataset.error
    assert dataset.stats["train"]["duplicates_dropped"] == 1
    warnings = {w["code"]: w for w in dataset.warnings}
    assert warnings["conversation_too_long"]["line"] == 13
    assert warnings["conversation_too_long"]["field"] == "messages"
    assert dataset.stats["train"]["tokens"]["rows_over_block_size"] == 1


# ---- preference pairs ------------------------------------------------------------------


def pair(prompt: Any, chosen: Any, rejected: Any) -> dict[str, Any]:
    return {
        "input": {"messages": prompt},
        "preferred_output": chosen,
        "non_preferred_output": rejected,
    }


def good_pair(i: int) -> dict[str, Any]:
    return pair(
        [{"role": "user", "content": f"What is {i} plus one?"}],
        [{"role": "assistant", "content": f"{i + 1}"}],
        [{"role": "assistant", "content": f"I think {i + 2}"}],
    )


USER = [{"role": "user", "content": "a"}]
YES, NO = [{"role": "assistant", "content": "yes"}], [{"role": "assistant", "content": "no"}]
PREFERENCE_BAD = [
    (
        "no preferred output",
        {"input": {"messages": USER}, "non_preferred_output": NO},
        "missing_field",
        "preferred_output",
    ),
    ("two preferred outputs", pair(USER, YES + YES, NO), "not_a_list", "preferred_output"),
    (
        "answer not a string",
        pair(USER, [{"role": "assistant", "content": 3}], NO),
        "not_a_string",
        "preferred_output[0].content",
    ),
    (
        "empty rejected answer",
        pair(USER, YES, [{"role": "assistant", "content": " "}]),
        "empty_content",
        "non_preferred_output[0].content",
    ),
    (
        "the answer is the user's",
        pair(USER, YES, [{"role": "user", "content": "no"}]),
        "unknown_role",
        "non_preferred_output[0].role",
    ),
    (
        "prompt ends on the assistant",
        pair([*USER, *YES], YES, NO),
        "prompt_not_on_user",
        "input.messages[1]",
    ),
    ("no input", {"preferred_output": YES, "non_preferred_output": NO}, "missing_field", "input"),
    (
        "misspelt prompt role",
        pair([{"role": "usr", "content": "a"}], YES, NO),
        "unknown_role",
        "input.messages[0].role",
    ),
    (
        "the same answer twice",
        pair(USER, YES, YES),
        "same_answers",
        "non_preferred_output[0].content",
    ),
]


@pytest.mark.parametrize(
    ("record", "code", "field"),
    [case[1:] for case in PREFERENCE_BAD],
    ids=[case[0] for case in PREFERENCE_BAD],
)
def test_a_bad_preference_pair_fails_naming_its_line_and_field(
    ctx: Context, record: Any, code: str, field: str
) -> None:
    body = [json.dumps(good_pair(i)) for i in range(11)] + [json.dumps(record)]
    dataset = ingest_bytes(ctx, "bad-pair", "\n".join(body).encode())
    assert dataset.status == "failed"
    first = dataset.error["details"][0]
    assert (first["code"], first["line"], first.get("field")) == (code, 12, field), first


def stored_table(ctx: Context, dataset: Dataset, split: str = "train") -> Any:
    with ctx.store.open(key_from_uri(dataset.files[split])) as data:
        return pq.read_table(data)


def test_preference_pairs_are_stored_with_their_prompt_and_both_answers(ctx: Context) -> None:
    records = [good_pair(i) for i in range(12)]
    records[3]["input"]["messages"] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "What is 3 plus one?"},
    ]
    data = "\n".join(json.dumps(r) for r in records).encode()
    dataset = ingest_bytes(ctx, "pairs", data)
    assert dataset.status == "ready", dataset.error
    assert dataset.stats["train"]["kind"] == "preference"
    assert dataset.stats["train"]["format"] == "preference"
    row = stored_table(ctx, dataset).slice(3, 1).to_pylist()[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user"]
    assert (row["chosen"], row["rejected"]) == ("4", "I think 5")
    assert dataset.stats["train"]["tokens"]["rows_over_block_size"] == 0


def test_a_preference_csv_is_recognised_by_its_columns_or_mapped(ctx: Context) -> None:
    rows = "".join(f'"Q{i}?","A{i}.","B{i}."\n' for i in range(12))
    auto = ingest_bytes(ctx, "pref-csv", ("prompt,chosen,rejected\n" + rows).encode(), "csv")
    assert auto.status == "ready", auto.error
    assert auto.stats["train"]["kind"] == "preference"
    assert stored_table(ctx, auto).column_names == ["prompt", "chosen", "rejected"]
    mapped = ingest_bytes(
        ctx,
        "pref-mapped",
        ("q,good,bad\n" + rows + '"Q12?","","B12."\n').encode(),
        "csv",
        mapping={"prompt": "q", "chosen": "good", "rejected": "bad"},
    )
    first = mapped.error["details"][0]
    assert (first["code"], first["line"], first["field"]) == ("empty_cell", 14, "good"), first


def test_every_split_holds_pairs_or_none_does(ctx: Context) -> None:
    pairs = "\n".join(json.dumps(good_pair(i)) for i in range(12)).encode()
    dataset = ingest_bytes(ctx, "mixed", pairs, validate=(lines(), "json"))
    first = dataset.error["details"][0]
    assert (first["code"], first["file"]) == ("split_kind_mismatch", "validate"), first
