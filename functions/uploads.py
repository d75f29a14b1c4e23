"""Streaming multipart uploads: file parts go to the object store as they arrive.

Nothing is held whole in memory, and a file that crosses the size limit is refused
(413) at that moment: the writers are aborted and the rest of the body is not read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tunelab.errors import BadRequest, Invalid, TooLarge
from tunelab.store import ObjectStore, ObjectWriter, StoredObject

MAX_FIELD_BYTES = 64 << 10
MAX_FORM_TEXT_BYTES = 1 << 20
"""All of a form's text fields together: a form of many fields is no dataset."""


@dataclass
class Received:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, StoredObject] = field(default_factory=dict)
    filenames: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    text: bytearray = field(default_factory=bytearray)


async def receive(
    request: Request, store: ObjectStore, file_keys: dict[str, str], max_file_bytes: int
) -> Received:
    """Parse the body; file parts named in `file_keys` are stored under those keys.

    On any error every object written so far is removed again.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadRequest("Send the dataset as multipart/form-data with 'file' and 'metadata'.")
    # The parser's callbacks only record what happened; the loop below acts on it, since
    # acting (writing to the store) needs `await`.
    events: list[tuple[str, Any]] = []
    current = _Part()
    header = [b"", b""]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        events.append(("header", (header[0].lower(), header[1])))
        header[0] = header[1] = b""

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": lambda: events.append(("begin", b"")),
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": lambda: events.append(("headers", b"")),
            "on_part_data": lambda data, start, end: events.append(("data", data[start:end])),
            "on_part_end": lambda: events.append(("end", b"")),
        },
    )
    received = Received()
    writers: dict[str, ObjectWriter] = {}
    sizes: dict[str, int] = {}
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise BadRequest(f"The multipart body is malformed: {exc}.") from None
            for kind, data in events:
                if kind == "begin":
                    current = _Part()
                elif kind == "header":
                    current.headers[data[0]] = data[1]
                elif kind == "headers":
                    _, disposition = parse_options_header(
                        current.headers.get(b"content-disposition", b"")
                    )
                    try:
                        current.name = disposition.get(b"name", b"").decode()
                        filename = disposition.get(b"filename")
                        current.filename = filename.decode() if filename is not None else None
                    except UnicodeDecodeError:
                        raise BadRequest("A part's name or file name is not UTF-8.") from None
                    if "\x00" in current.name + (current.filename or ""):
                        raise BadRequest("A part's name or file name holds a NUL character.")
                    if current.filename is not None and current.name in file_keys:
                        if current.name in writers:
                            raise Invalid(
                                f"The upload has two {current.name!r} parts.",
                                [{"field": current.name, "message": "repeated"}],
                            )
                        writers[current.name] = store.writer(file_keys[current.name])
                        sizes[current.name] = 0
                elif kind == "data":
                    await _take(current, data, writers, sizes, max_file_bytes)
                elif kind == "end":
                    await _finish_part(current, writers, received)
            events.clear()
        parser.finalize()
        unfinished = set(writers) - set(received.files)
        if unfinished:
            raise BadRequest(
                f"The body ended inside the {sorted(unfinished)} part(s); send the whole file."
            )
    except BaseException:
        for name, writer in writers.items():
            if name in received.files:
                await run_in_threadpool(store.delete, received.files[name].key)
            else:
                await run_in_threadpool(writer.abort)
        raise
    return received


async def _take(
    part: _Part, data: bytes, writers: dict[str, ObjectWriter], sizes: dict[str, int], limit: int
) -> None:
    writer = writers.get(part.name) if part.filename is not None else None
    if writer is None:
        part.text += data
        if len(part.text) > MAX_FIELD_BYTES:
            raise TooLarge(f"The form field {part.name!r} is over {MAX_FIELD_BYTES >> 10} KB.")
        sizes[""] = sizes.get("", 0) + len(data)  # the text of every field together
        if sizes[""] > MAX_FORM_TEXT_BYTES:
            raise TooLarge(f"The form's fields are over {MAX_FORM_TEXT_BYTES >> 20} MB together.")
        return
    sizes[part.name] += len(data)
    if sizes[part.name] > limit:
        raise TooLarge(
            f"The file {part.filename!r} is over {limit >> 20} MB, the limit for a dataset file.",
            [{"field": part.name, "message": "too large"}],
        )
    await run_in_threadpool(writer.write, data)


async def _finish_part(part: _Part, writers: dict[str, ObjectWriter], received: Received) -> None:
    writer = writers.get(part.name) if part.filename is not None else None
    if writer is not None:
        received.files[part.name] = await run_in_threadpool(writer.commit)
        received.filenames[part.name] = part.filename or ""
    elif part.name:
        try:
            received.fields[part.name] = part.text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"The form field {part.name!r} is not UTF-8 text.") from None
