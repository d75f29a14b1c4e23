"""Throughput and memory of the CSV ingestion check, beside a plain pandas baseline.

Run by hand (not in CI), from the repository root:

    .venv/bin/python bench/ingest.py [--runs 3] [--regenerate]

It generates, once, a ~50 MB Q&A CSV of mixed Chinese/English rows (cached under
/tmp/tunelab-bench, seeded so every run reads the same bytes) and a copy whose header
is wrong. It measures:

1. parse+validate: `check_file` with a sink that drops the rows: throughput (file MB /
   wall time) and peak RSS, each run in a fresh subprocess so that peaks do not leak
   from one measure into the next (time: the median run; RSS: the worst run); and the
   same with the rows written to Parquet, as the ingestion step does;
2. the baseline, `pd.read_csv(path)` and a per-row Python loop doing the same checks,
   measured the same way;
3. how long `check_file` takes to fail the file with the wrong header (median of 5).

MB here means 2**20 bytes.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1 << 20
CACHE = Path("/tmp/tunelab-bench")
GOOD = CACHE / "qa-50mb.csv"
BAD = CACHE / "qa-50mb-bad-header.csv"
MAPPING = {"question": "question", "answer": "answer"}
FORMULA_PREFIXES = ("=", "+", "-", "@")
EN_TEXT = (
    "the model data training loss rate batch token layer weight answer question user "
    "system value check file row column python vector memory fast slow result error "
    "because however which would could should about under over between through learning "
    "gradient epoch dataset schema parquet arrow pandas quote comma line text unicode"
)
EN_WORDS = EN_TEXT.split()
# Common characters; full-width punctuation is written as escapes (ruff's RUF001).
ZH_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
ZH_PUNCT = ("\uff0c", "\u3002", "\u3001")  # full-width comma, full stop, enumeration comma


def sentence(rng: random.Random, zh: bool, words: int) -> str:
    if zh:
        text = "".join(rng.choices(ZH_CHARS, k=words * 2))
        cuts = sorted(rng.sample(range(1, len(text)), k=min(3, len(text) - 1)))
        parts = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        return rng.choice((ZH_PUNCT[0], ZH_PUNCT[2])).join(parts)
    chosen = rng.choices(EN_WORDS, k=words)
    if rng.random() < 0.3:  # commas and inner quotes make the writer quote the field
        chosen[rng.randrange(words)] += ","
        i = rng.randrange(words)
        chosen[i] = f'"{chosen[i]}"'
    return " ".join(chosen).capitalize()


def make_row(rng: random.Random, zh: bool) -> tuple[str, str]:
    mark, stop = ("\uff1f", ZH_PUNCT[1]) if zh else ("?", ".")
    question = sentence(rng, zh, rng.randint(4, 30)) + mark
    # Answer lengths spread over two orders of magnitude; some span several lines,
    # with list items inside (a cell only counts as a formula by its first character).
    paragraphs = [
        sentence(rng, zh, int(rng.lognormvariate(3.5, 0.9)) + 3) + stop
        for _ in range(rng.choice((1, 1, 1, 2, 3)))
    ]
    if rng.random() < 0.1:
        paragraphs.append("- " + sentence(rng, zh, 6) + stop)
    return question, "\n".join(paragraphs)


def generate(size: int = 50 * MB, seed: int = 20240601) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows: list[tuple[str, str]] = []
    with GOOD.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["question", "answer"])
        while out.tell() < size:
            # About 1% exact duplicates, which the check drops.
            if rows and rng.random() < 0.01:
                row = rng.choice(rows)
            else:
                row = make_row(rng, zh=rng.random() < 0.4)
            rows.append(row)
            writer.writerow(row)
    with GOOD.open("rb") as src, BAD.open("wb") as dst:
        src.readline()
        dst.write(b"prompt,reply\r\n")
        dst.write(src.read())


def run_tunelab(path: Path, write: bool) -> dict[str, object]:
    """Parse and validate; with `write`, also store the rows as Parquet, as ingestion does."""
    from tunelab.workers.cpu.csvcheck import check_file
    from tunelab.workers.cpu.ingest import ParquetSink

    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        sink = ParquetSink(Path(tmp) / "train.parquet") if write else None
        report = check_file(
            lambda: path.open("rb"), MAPPING, sink or (lambda table: None), language="en"
        )
        if sink is not None:
            sink.close()  # inside the timed part: production flushes the Parquet too
    return {"rows": report.stats.get("rows"), "ok": report.ok, "errors": report.error_total}


def run_baseline(path: Path) -> dict[str, object]:
    import pandas as pd

    df = pd.read_csv(path)
    if not {"question", "answer"} <= set(df.columns):
        return {"rows": 0, "ok": False, "errors": 1}
    errors = formulas = rows = 0
    seen: set[tuple[object, object]] = set()
    for question, answer in zip(df["question"], df["answer"], strict=True):
        for cell in (question, answer):
            # read_csv turns empty cells into NaN floats.
            if not isinstance(cell, str) or not cell.strip():
                errors += 1
            elif cell.startswith(FORMULA_PREFIXES):
                formulas += 1
        if (question, answer) not in seen:
            seen.add((question, answer))
            rows += 1
    return {"rows": rows, "ok": errors == 0, "errors": errors}


def child(which: str, path: Path) -> None:
    # Both modes import the same libraries, so the after-import RSS is comparable.
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import tunelab.workers.cpu.ingest  # noqa: F401

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux
    start = time.perf_counter()
    if which == "baseline":
        result = run_baseline(path)
    else:
        result = run_tunelab(path, write=which == "tunelab+parquet")
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**result, "seconds": seconds, "base_kb": base_kb, "peak_kb": peak_kb}))


def measure(runs: int) -> dict[str, dict[str, float]]:
    size_mb = GOOD.stat().st_size / MB
    results: dict[str, list[dict[str, float]]] = {
        "tunelab": [],
        "tunelab+parquet": [],
        "baseline": [],
    }
    # Alternate the two so that load from elsewhere on the machine hits both alike.
    for _ in range(runs):
        for which, runs_of in results.items():
            cmd = [sys.executable, __file__, "--child", which]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs_of.append(json.loads(out.splitlines()[-1]))
    summary = {}
    for which, rs in results.items():
        seconds = statistics.median(r["seconds"] for r in rs)
        summary[which] = {
            "throughput MB/s": size_mb / seconds,
            "wall time s (median)": seconds,
            "peak RSS MB": max(r["peak_kb"] for r in rs) / 1024,
            "RSS MB per input MB": max(r["peak_kb"] - r["base_kb"] for r in rs) / 1024 / size_mb,
            "rows kept": rs[0]["rows"],
            "ok": rs[0]["ok"],
        }
    return summary


def wrong_header_ms() -> float:
    from tunelab.workers.cpu.csvcheck import check_file

    times = []
    for _ in range(5):
        start = time.perf_counter()
        report = check_file(lambda: BAD.open("rb"), MAPPING, lambda table: None)
        times.append((time.perf_counter() - start) * 1000)
        assert not report.ok, "the wrong header was not caught"
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="subprocess runs per measure")
    parser.add_argument("--regenerate", action="store_true", help="rewrite the cached CSVs")
    parser.add_argument(
        "--child", choices=("tunelab", "tunelab+parquet", "baseline"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(args.child, GOOD)
        return
    if args.regenerate or not (GOOD.exists() and BAD.exists()):
        start = time.perf_counter()
        generate()
        print(f"generated {GOOD} in {time.perf_counter() - start:.1f} s")
    size_mb = GOOD.stat().st_size / MB
    print(f"input: {GOOD} ({size_mb:.1f} MB), {args.runs} run(s) each, fresh subprocesses")
    GOOD.read_bytes()  # warm the page cache so the first measured run is not a disk read
    summary = measure(args.runs)
    ours, base, full = summary["tunelab"], summary["baseline"], summary["tunelab+parquet"]
    fail_ms = wrong_header_ms()

    targets = {"throughput MB/s": ">= 100 MB/s, >= 3x baseline", "RSS MB per input MB": "<= 3"}
    # ratio is tunelab / baseline on every line: > 1 is better for MB/s, worse for the rest.
    print(f"\n{'measure':<24}{'tunelab':>10}{'baseline':>10}{'ratio':>8}  target")
    for label, t in ours.items():
        if label != "ok":
            b = base[label]
            print(f"{label:<24}{t:>10.2f}{b:>10.2f}{t / b:>8.2f}  {targets.get(label, '')}")
    print(f"{'wrong header fail ms':<24}{fail_ms:>10.2f}{'-':>10}{'-':>8}  <= 100 ms")
    print(
        f"{'with Parquet write MB/s':<24}{full['throughput MB/s']:>10.2f}{'-':>10}{'-':>8}  "
        f"(whole ingestion step; peak RSS {full['peak RSS MB']:.0f} MB)\n"
    )

    checks = {
        "throughput >= 100 MB/s": ours["throughput MB/s"] >= 100,
        "throughput >= 3x baseline": ours["throughput MB/s"] >= 3 * base["throughput MB/s"],
        "RSS <= 3 MB per input MB": ours["RSS MB per input MB"] <= 3,
        "wrong header fails <= 100 ms": fail_ms <= 100,
        "both report the file valid": bool(ours["ok"] and base["ok"]),
    }
    for name, met in checks.items():
        print(f"{'MET ' if met else 'MISS'}  {name}")


if __name__ == "__main__":
    main()
