"""Writes the catalogue of dataset files the tests use (run once; outputs are committed).

python tests/datasets/make.py
"""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
ROWS = [(f"What is {i} plus {i}?", f"It is {2 * i}.") for i in range(12)]


def csv_text(rows: list[tuple[str, str]], header: str = "question,answer") -> str:
    return header + "\n" + "".join(f"{q},{a}\n" for q, a in rows)


def write(name: str, data: str | bytes) -> None:
    (HERE / name).write_bytes(data.encode() if isinstance(data, str) else data)


def main() -> None:
    good = csv_text(ROWS)
    write("good.csv", good)
    write("good-bom.csv", "\ufeff" + good)
    write(
        "encoding-gbk.csv",
        ("question,answer\n" + "".join(f"问题{i}是什么？,答案{i}\n" for i in range(12))).encode(
            "gbk"
        ),
    )
    write("encoding-utf16.csv", good.encode("utf-16"))
    lines = good.splitlines(keepends=True)
    write("nul-byte.csv", "".join(lines[:2]) + "What\x00 is this?,binary\n" + "".join(lines[2:]))
    write("gzip.csv", gzip.compress(good.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    write("excel.csv", buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", good)
    write("zip.csv", buffer.getvalue())
    write("semicolons.csv", good.replace(",", ";"))
    write("tabs.csv", good.replace(",", "\t"))
    write(
        "unbalanced-quotes.csv",
        "".join(lines[:5]) + '"What is open,never closed\n' + "".join(lines[5:]),
    )
    write("too-many-fields.csv", "".join(lines[:4]) + "a?,b,c\n" + "".join(lines[4:]))
    write("too-few-fields.csv", "".join(lines[:6]) + "lonely?\n" + "".join(lines[6:]))
    write("no-header.csv", "".join(lines[1:]))
    write("missing-column.csv", csv_text(ROWS, "question,response"))
    write("misspelt-column.csv", csv_text(ROWS, "questoin,answer"))
    write(
        "duplicated-column.csv",
        "question,answer,answer\n" + "".join(f"{q},{a},{a}\n" for q, a in ROWS),
    )
    write("empty-cell.csv", "".join(lines[:8]) + "Where is it?,\n" + "".join(lines[8:]))
    write("whitespace-cell.csv", "".join(lines[:3]) + '"   ",Nothing asked.\n' + "".join(lines[3:]))
    write("too-few-rows.csv", csv_text(ROWS[:9]))
    write("duplicates.csv", good + "".join(lines[1:4]))
    write("formula.csv", good + '=HYPERLINK("http://x"),click\n@SUM(A1),sum\n')
    write("html.csv", good + "<script>alert(1)</script>,<b>bold</b>\n")
    write("empty.csv", "")
    write(
        "multiline.csv",
        "question,answer\n"
        + "".join(
            f'"Line one of {i}\nline two?","Answer {i},\nwith ""quotes"""\n' for i in range(12)
        ),
    )
    write(
        "chinese.csv",
        "question,answer\n"
        + "".join(f"第{i}个问题是什么？,这是第{i}个答案。\n" for i in range(12)),
    )


if __name__ == "__main__":
    main()
