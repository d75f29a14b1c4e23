"""Checking a Q&A CSV file: every problem named with its line and field.

Two passes keep it fast and precise: a cheap look at the first bytes and the header
fails bad files in milliseconds whatever their size; then pyarrow parses the body in
blocks and every check is vectorised. Only when the body has problems does a slow
Python `csv` pass run, to give each problem its physical line number.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tunelab.dataset_rules import (
    FORMULA_PREFIXES,
    PREFERENCE_MAPPING,
    QA_MAPPING,
    size_category,
)

MAX_REPORTED = 100
MIN_ROWS = 10
HEAD_BYTES = 64 << 10
BLOCK_BYTES = 4 << 20
LANGUAGE_SAMPLE_BYTES = 256 << 10


def _byte_table(members: bytes) -> np.ndarray:
    """A 256-entry lookup table: `table[byte_array]` tests membership in one pass."""
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(members, dtype=np.uint8)] = True
    return table


FORMULA_FIRST_BYTE = _byte_table("".join(FORMULA_PREFIXES).encode())
# First bytes of every Unicode whitespace character in UTF-8 (ASCII space and controls,
# U+0085/U+00A0, U+1680, U+2000-U+205F, U+3000).
SPACE_FIRST_BYTE = _byte_table(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\xc2\xe1\xe2\xe3")

Opener = Callable[[], IO[bytes]]


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    line: int | None = None
    field: str | None = None

    def to_json(self, split: str) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "file": split, "message": self.message}
        if self.line is not None:
            body["line"] = self.line
        if self.field is not None:
            body["field"] = self.field
        return body


@dataclass
class Report:
    errors: list[Problem] = field(default_factory=list)
    error_total: int = 0
    warnings: list[Problem] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def error(self, problem: Problem) -> None:
        self.error_total += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(problem)

    @property
    def ok(self) -> bool:
        return self.error_total == 0


# ---- first bytes and header ----------------------------------------------------------

_MAGIC = [
    (b"\x1f\x8b", "compressed_file", "a gzip archive"),
    (b"BZh", "compressed_file", "a bzip2 archive"),
    (b"\xfd7zXZ", "compressed_file", "an xz archive"),
    (b"PAR1", "binary_content", "a Parquet file"),
    (b"%PDF", "binary_content", "a PDF document"),
    (b"\xd0\xcf\x11\xe0", "binary_content", "an old Excel/Office file (.xls)"),
]
_BOMS = [
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
]


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def guess_encoding(sample: bytes) -> str:
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    return best.encoding.upper().replace("_", "-") if best else "an unknown encoding"


def check_head(head: bytes, kind: str = "CSV") -> Problem | None:
    """File-level problems visible in the first bytes of a `kind` text file, or None."""
    if not head.strip():
        return Problem("empty_file", "The file is empty.", 1)
    for magic, code, what in _MAGIC:
        if head.startswith(magic):
            return Problem(
                code, f"The file is {what}, not a {kind} text file; upload the {kind} itself.", 1
            )
    if head.startswith(b"PK\x03\x04"):
        what = "an Excel workbook (.xlsx)" if b"xl/" in head else "a zip archive"
        hint = "save it as CSV (UTF-8)" if "xlsx" in what else f"upload the {kind} inside it"
        return Problem("compressed_file", f"The file is {what}, not {kind}; {hint}.", 1)
    for bom, name in _BOMS:
        if head.startswith(bom):
            return Problem("encoding", f"The file is encoded as {name}; save it as UTF-8.", 1)
    nul = head.find(b"\x00")
    if nul >= 0:
        return Problem(
            "binary_content",
            f"The file holds NUL bytes: it is binary, not {kind} text.",
            _line_of(head, nul),
        )
    body = head.removeprefix(codecs.BOM_UTF8)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
    except UnicodeDecodeError as exc:
        return Problem(
            "encoding",
            f"The file is not UTF-8 (it looks like {guess_encoding(body)}); save it as UTF-8.",
            _line_of(body, exc.start),
        )
    return None


def read_header(head: bytes) -> list[str] | None:
    text = head.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="replace")
    try:
        return next(csv.reader(io.StringIO(text)), None)
    except csv.Error:
        return None


def _looks_like_data(header: list[str]) -> bool:
    return any(
        len(cell) > 40 or cell.rstrip().endswith(("?", "\uff1f", "\u3002", ".")) for cell in header
    )


def check_header(header: list[str] | None, mapping: dict[str, str]) -> list[Problem]:
    """Problems of the header line: delimiter, duplicates, the mapped columns."""
    if not header or not any(cell.strip() for cell in header):
        return [
            Problem(
                "header_missing",
                "The first line is empty; it must name the columns (e.g. question,answer).",
                1,
            )
        ]
    problems = []
    if len(header) == 1:
        for delimiter, name in ((";", "semicolons"), ("\t", "tabs")):
            if delimiter in header[0]:
                return [
                    Problem(
                        "delimiter",
                        f"Columns are separated by {name}, not commas; "
                        "save the file as comma-separated CSV.",
                        1,
                    )
                ]
    for field_name, column in mapping.items():
        count = header.count(column)
        if count > 1:
            problems.append(
                Problem(
                    "column_duplicated",
                    f"Column {column!r} appears {count} times in the header; keep one.",
                    1,
                    f"feature_mapping.{field_name}",
                )
            )
        elif count == 0:
            problems.append(_missing_column(header, field_name, column))
    if (
        problems
        and all(p.code == "column_missing" for p in problems)
        and len(problems) == len(mapping)
        and _looks_like_data(header)
    ):
        return [
            Problem(
                "header_missing",
                "The first line looks like data, not a header; "
                f"add a first line naming the columns ({','.join(mapping.values())}).",
                1,
            )
        ]
    return problems


def _missing_column(header: list[str], field_name: str, column: str) -> Problem:
    by_lower = {cell.strip().lower(): cell for cell in header}
    near = difflib.get_close_matches(column.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f"; did you mean {by_lower[near[0]]!r}?" if near else ""
    return Problem(
        "column_missing",
        f"The header has no column {column!r} (it has {header}){hint}",
        1,
        f"feature_mapping.{field_name}",
    )


# ---- the body -------------------------------------------------------------------------


@dataclass
class _Scan:
    """What the vectorised pass found; row indexes count only well-formed rows."""

    rows: int = 0
    kept: int = 0
    duplicates: int = 0
    bad_rows: int = 0
    empty: list[tuple[int, str]] = field(default_factory=list)
    empty_total: int = 0
    nul: list[tuple[int, str]] = field(default_factory=list)
    formula: list[tuple[int, str]] = field(default_factory=list)
    formula_total: int = 0
    seen: set[int] = field(default_factory=set)
    """Hashes of the question/answer pairs kept so far."""
    cjk_chars: int = 0
    chars: int = 0
    parse_error: str | None = None


def _indexes(mask: pa.Array, offset: int, limit: int) -> list[int]:
    hits = np.flatnonzero(mask.to_numpy(zero_copy_only=False))[:limit]
    return [offset + int(i) for i in hits]


def _scan(stream: IO[bytes], mapping: dict[str, str], sink: Callable[[pa.Table], None]) -> _Scan:
    scan = _Scan()
    names = {column: field_name for field_name, column in mapping.items()}

    def invalid_row(row: Any) -> str:
        scan.bad_rows += 1
        return "skip"

    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=True),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid_row),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(names),
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    try:
        for batch in reader:
            renamed = pa.RecordBatch.from_arrays(
                batch.columns, names=[names[n] for n in batch.schema.names]
            )
            _scan_batch(scan, renamed, sink)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        scan.parse_error = str(exc)
    return scan


def _utf8_bytes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's offsets and the bytes they index, without copying."""
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[
        values.offset : values.offset + len(values) + 1
    ]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer else np.zeros(0, np.uint8)
    return offsets, data


def _scan_batch(scan: _Scan, batch: pa.RecordBatch, sink: Callable[[pa.Table], None]) -> None:
    offset, n = scan.rows, batch.num_rows
    scan.rows += n
    for column in batch.schema.names:
        values = batch.column(column)
        offsets, data = _utf8_bytes(values)
        text = data[offsets[0] : offsets[-1]]
        lengths = np.diff(offsets)
        first = np.zeros(len(values), dtype=np.uint8)
        first[lengths > 0] = data[offsets[:-1][lengths > 0]]
        # Empty, or only whitespace: a whitespace-only cell starts with a byte that can
        # begin whitespace, so only those few cells need the (slower) Unicode test.
        empty = lengths == 0
        maybe_space = np.flatnonzero(SPACE_FIRST_BYTE[first])
        if maybe_space.size:
            spaces = pc.utf8_is_space(values.take(pa.array(maybe_space)))
            empty[maybe_space[spaces.to_numpy(zero_copy_only=False)]] = True
        scan.empty_total += int(empty.sum())
        scan.empty += [(offset + int(i), column) for i in np.flatnonzero(empty)[:MAX_REPORTED]]
        if text.size and not text.all():  # a zero byte somewhere: find its rows
            nul = pc.greater(pc.count_substring(values, "\x00"), 0)
            scan.nul += [(i, column) for i in _indexes(nul, offset, MAX_REPORTED)]
        formula = FORMULA_FIRST_BYTE[first]
        scan.formula_total += int(formula.sum())
        scan.formula += [(offset + int(i), column) for i in np.flatnonzero(formula)[:5]]
        # The language check needs a ratio, not a count: a sample of each block does.
        # Characters are the bytes that do not continue a UTF-8 sequence; lead bytes
        # E4-E9 start the code points U+4000-U+9FFF, the common CJK ideographs.
        sample = text[:LANGUAGE_SAMPLE_BYTES]
        scan.chars += int(np.count_nonzero((sample & 0xC0) != 0x80))
        scan.cjk_chars += int(np.count_nonzero((sample >= 0xE4) & (sample <= 0xE9)))
    # Exact duplicate rows: keep the first of each, across blocks. Each cell is hashed
    # as bytes (no UTF-8 decoding); rotating each column's hash by its position keeps
    # (a, b) != (b, a).
    pair = np.zeros(n, dtype=np.uint64)
    for position, column in enumerate(batch.schema.names):
        hashed = pd.util.hash_array(
            batch.column(column).cast(pa.binary()).to_numpy(zero_copy_only=False),
            categorize=False,
        )
        if position:
            shift = np.uint64(position)
            hashed = (hashed << shift) | (hashed >> (np.uint64(64) - shift))
        pair ^= hashed
    keep = np.zeros(n, dtype=bool)
    for i, value in enumerate(pair.tolist()):
        if value not in scan.seen:
            scan.seen.add(value)
            keep[i] = True
    kept = batch if keep.all() else batch.filter(pa.array(keep))
    scan.duplicates += n - kept.num_rows
    scan.kept += kept.num_rows
    sink(pa.Table.from_batches([kept]))


# ---- line numbers, for the problems found ------------------------------------------------


def _quote_problem(exc: csv.Error, line: int) -> Problem:
    return Problem(
        "unbalanced_quotes",
        f"A quoted value starting on this line is not closed properly ({exc}); "
        "check its double quotes.",
        line,
    )


def locate(
    stream: IO[bytes], width: int, wanted: set[int], whole: bool = True
) -> tuple[list[Problem], dict[int, int]]:
    """A Python `csv` pass: structural problems with their lines, and the start line of
    each wanted well-formed row (indexes as the vectorised pass counts them).

    With `whole` False the pass stops after the last wanted row: enough when the
    vectorised pass found no structural problem to look for.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        last = max(wanted, default=-1) if not whole else None
        return _locate(csv.reader(text, strict=True), width, wanted, last)
    finally:
        text.detach()  # the caller closes the stream


def _locate(
    reader: Any, width: int, wanted: set[int], last: int | None
) -> tuple[list[Problem], dict[int, int]]:
    problems: list[Problem] = []
    lines: dict[int, int] = {}
    index = 0
    next(reader, None)
    while len(problems) < MAX_REPORTED:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(_quote_problem(exc, start))
            break  # past a broken quote the rest cannot be read reliably
        if not row:
            continue
        if len(row) != width:
            problems.append(
                Problem(
                    "wrong_field_count",
                    f"This row has {len(row)} fields; the header has {width}.",
                    start,
                )
            )
            continue
        if index in wanted:
            lines[index] = start
        if last is not None and index >= last:
            break
        index += 1
    return problems, lines


def locate_encoding(stream: IO[bytes]) -> list[Problem]:
    problems: list[Problem] = []
    for number, raw in enumerate(stream, 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            if not problems:
                sample = raw + stream.read(HEAD_BYTES)
                name = guess_encoding(sample)
            problems.append(
                Problem(
                    "encoding",
                    f"This line is not UTF-8 (the file looks like {name}); save the file as UTF-8.",
                    number,
                )
            )
            if len(problems) >= MAX_REPORTED:
                break
    return problems


# ---- the whole file ------------------------------------------------------------------------


def check_file(
    open_: Opener,
    mapping: dict[str, str],
    sink: Callable[[pa.Table], None],
    *,
    language: str = "en",
    declared_size: str | None = None,
    min_rows: int = MIN_ROWS,
) -> Report:
    """Check one CSV; the deduplicated question/answer rows go to `sink` as they pass."""
    report = Report()
    with open_() as stream:
        head = stream.read(HEAD_BYTES)
    problem = check_head(head)
    if problem is not None:
        report.error(problem)
        return report
    header = read_header(head)
    if (
        mapping == QA_MAPPING
        and header
        and "question" not in header
        and all(c in header for c in PREFERENCE_MAPPING)
    ):
        mapping = PREFERENCE_MAPPING  # prompt,chosen,rejected: a preference CSV
    for problem in check_header(header, mapping):
        report.error(problem)
    if not report.ok or header is None:
        return report

    with open_() as stream:
        scan = _scan(stream, mapping, sink)
    if scan.parse_error and "UTF8" in scan.parse_error:
        with open_() as stream:
            for problem in locate_encoding(stream):
                report.error(problem)
        return report
    cells = scan.empty + scan.nul + scan.formula
    if scan.bad_rows or scan.parse_error or cells:
        with open_() as stream:
            structural = bool(scan.bad_rows or scan.parse_error)
            problems, lines = locate(stream, len(header), {i for i, _ in cells}, structural)
        for problem in problems:
            report.error(problem)
        if scan.parse_error and not problems:
            report.error(
                Problem("unreadable", f"The file cannot be read as CSV: {scan.parse_error}")
            )
    else:
        lines = {}
    column = dict(mapping)
    for index, name in scan.empty:
        report.error(
            Problem(
                "empty_cell",
                f"The {name} is empty or only whitespace.",
                lines.get(index),
                column[name],
            )
        )
    report.error_total += scan.empty_total - len(scan.empty)
    for index, name in scan.nul:
        report.error(
            Problem("binary_content", "The cell holds a NUL byte.", lines.get(index), column[name])
        )
    if report.ok and scan.kept < min_rows:
        report.error(
            Problem(
                "too_few_rows",
                f"The file has {scan.kept} usable rows; at least {min_rows} are needed.",
            )
        )
    measured = size_category(scan.kept)
    if declared_size and declared_size != measured:
        report.error(
            Problem(
                "size_category_mismatch",
                f"The size category says "
                f"{declared_size!r} but the file has {scan.kept} rows "
                f"({measured!r}).",
                None,
                "size_category",
            )
        )
    _warn(report, scan, column, lines, language)
    report.stats = {
        "kind": "preference" if "chosen" in mapping else "pairs",
        "rows": scan.kept,
        "rows_read": scan.rows,
        "duplicates_dropped": scan.duplicates,
        "size_category": measured,
    }
    return report


def _warn(
    report: Report, scan: _Scan, column: dict[str, str], lines: dict[int, int], language: str
) -> None:
    if scan.duplicates:
        report.warnings.append(
            Problem(
                "duplicate_rows",
                f"{scan.duplicates} exact duplicate rows were dropped.",
            )
        )
    if scan.formula_total:
        where = ", ".join(f"line {lines.get(i, '?')} ({column[c]})" for i, c in scan.formula)
        report.warnings.append(
            Problem(
                "formula_injection",
                f"{scan.formula_total} cells begin with =, +, -, @, a tab or a CR and could run as "
                f"spreadsheet formulas; CSV exports neutralise them (first: {where}).",
                lines.get(scan.formula[0][0]) if scan.formula else None,
            )
        )
    ratio = scan.cjk_chars / scan.chars if scan.chars else 0.0
    if language == "zh" and ratio < 0.05:
        report.warnings.append(
            Problem(
                "language_mismatch",
                "The dataset is declared Chinese but its text is mostly not.",
                None,
                "language",
            )
        )
    elif language == "en" and ratio > 0.3:
        report.warnings.append(
            Problem(
                "language_mismatch",
                f"The dataset is declared English but {ratio:.0%} of its characters are Chinese.",
                None,
                "language",
            )
        )
