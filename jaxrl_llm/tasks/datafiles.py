"""Data files read row by row: bad rows skipped and counted, an unusable file one `DataError`.

    rows = read_rows(path, parse, max_bad_fraction=0.1)   # [parse(record) for each good record]
    kept, num_dropped = filter_long_prompts(examples, encode_fn, max_len)

Formats, by extension: `.parquet` (read with `datasets`), `.json` (a JSON array
of objects, or JSON lines), anything else JSON lines. JSON lines are parsed one
line at a time, so one bad line costs one row, not the file. A row is bad when

    its line is not UTF-8, or not valid JSON, or not a JSON object,
    or `parse(record)` raises `BadRow` (a missing field, a field of the wrong
    type — a type change between rows —, a row without a gold answer, ...).

Bad rows are skipped; one warning (`logging.warning`, logger
`jaxrl_llm.tasks.datafiles`) names the file, the count and the first bad rows
with their reasons. When more than `max_bad_fraction` of the rows are bad,
reading stops with that summary as a `DataError`. A file that cannot be used
at all — missing, not UTF-8 (a UTF-16 byte-order mark, or no line decodes), a
`.json` array that does not parse, a parquet file that does not load, or no
valid row — is one `DataError` naming the path. `DataError` is a `ValueError`.

Row numbers are 1-based: lines of a JSON-lines file, elements of a JSON array,
rows of a parquet file or a hub split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "DataError",
    "BadRow",
    "LoadReport",
    "read_rows",
    "check_rows",
    "filter_long_prompts",
    "MAX_BAD_FRACTION",
]

logger = logging.getLogger(__name__)

MAX_BAD_FRACTION = 0.1
_SHOW = 5  # bad rows named in a summary


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and what is wrong."""


class BadRow(ValueError):
    """Raised by a row parser: this row is skipped and counted (the message is the reason)."""


@dataclasses.dataclass
class LoadReport:
    """Counts of one file: `rows` read (blank lines excluded) and `bad` (row number, reason)."""

    source: str
    unit: str = "line"
    rows: int = 0
    bad: list = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        shown = "; ".join(f"{self.unit} {i}: {why}" for i, why in self.bad[:_SHOW])
        more = f"; … {len(self.bad) - _SHOW} more" if len(self.bad) > _SHOW else ""
        frac = len(self.bad) / max(self.rows, 1)
        return (
            f"{self.source}: skipped {len(self.bad)} of {self.rows} rows ({frac:.1%}) — "
            f"{shown}{more}"
        )


def _check_fraction(max_bad_fraction: float) -> None:
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "…")


def _json_lines(data: bytes) -> Iterable[tuple[int, Any]]:
    for i, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield i, BadRow(f"not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, BadRow(f"invalid JSON ({e.msg} at column {e.colno}): {_short(line)}")


def _records(path: str, report: LoadReport) -> Iterable[tuple[int, Any]]:
    """(row number, record or BadRow) of a file; DataError when the file is unusable.

    Sets `report.unit` to 'row' for formats without lines.
    """
    if not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist")
    if not os.path.isfile(path):
        raise DataError(f"data file {path!r} is not a file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        import datasets  # lazy: heavy

        try:
            ds = datasets.load_dataset("parquet", data_files=path, split="train")
        except Exception as e:  # noqa: BLE001 - the user needs the path, not pyarrow's stack
            raise DataError(f"data file {path!r}: cannot read it as parquet: {e}") from e
        report.unit = "row"
        yield from enumerate(ds, 1)
        return
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"data file {path!r} cannot be read: {e}") from e
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"data file {path!r} is UTF-16 (byte-order mark), not UTF-8")
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
    if ext == ".json" and data.lstrip().startswith(b"["):
        try:
            records = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"data file {path!r} is not UTF-8 (byte offset {e.start})") from e
        except json.JSONDecodeError as e:
            raise DataError(
                f"data file {path!r}: invalid JSON array ({e.msg} at line {e.lineno} "
                f"column {e.colno})"
            ) from e
        report.unit = "row"
        yield from enumerate(records, 1)
        return
    yield from _json_lines(data)


def check_rows(
    records: Iterable[tuple[int, Any]],
    parse: Callable[[dict], Any] | None,
    report: LoadReport,
    *,
    max_bad_fraction: float = MAX_BAD_FRACTION,
) -> list:
    """`parse(record)` of each good (row number, record); the rules of the module doc.

    `records` may hold `BadRow`s in place of records (rows already found bad);
    `report` receives the counts. Logs the summary; raises DataError past the limit.
    """
    _check_fraction(max_bad_fraction)
    out = []
    for i, record in records:
        report.rows += 1
        try:
            if isinstance(record, BadRow):
                raise record
            if not isinstance(record, dict):
                raise BadRow(f"not a JSON object but {type(record).__name__}")
            out.append(parse(record) if parse is not None else record)
        except BadRow as e:
            report.bad.append((i, str(e)))
    if report.rows == 0:
        raise DataError(f"{report.source} is empty: no rows")
    if not out:
        raise DataError(f"{report.summary()}; no valid row is left")
    if report.bad:
        frac = len(report.bad) / report.rows
        if frac > max_bad_fraction:
            raise DataError(
                f"{report.summary()}; more than max_bad_fraction={max_bad_fraction} of the rows "
                "are bad, so loading stopped (fix the file, or raise max_bad_fraction)"
            )
        logger.warning("%s", report.summary())
    return out


def read_rows(
    path: str,
    parse: Callable[[dict], Any] | None = None,
    *,
    max_bad_fraction: float = MAX_BAD_FRACTION,
    report: LoadReport | None = None,
) -> list:
    """`parse(record)` for each good row of the file at `path` (the records when parse is None).

    `parse` raises `BadRow` to skip a row. Raises DataError (module doc). Pass a
    `LoadReport` to read the counts afterwards.
    """
    _check_fraction(max_bad_fraction)
    report = report if report is not None else LoadReport(source=f"data file {path!r}")
    return check_rows(_records(path, report), parse, report, max_bad_fraction=max_bad_fraction)


def _prompt_of(item: Any) -> str:
    if isinstance(item, str):
        return item
    if hasattr(item, "prompt"):
        return item.prompt
    return item[0]  # a (prompt, completion) pair


def filter_long_prompts(
    items: Sequence[Any],
    encode_fn: Callable[[list[str]], Sequence[Sequence[int]]],
    max_len: int,
    *,
    source: str = "prompts",
) -> tuple[list, int]:
    """(the items whose prompt has ≤ `max_len` tokens, how many were dropped).

    items: `Example`s, (prompt, completion) pairs or prompt strings.
    encode_fn: prompts → token ids, batched, e.g.
      `functools.partial(trainers.text.encode_prompts, tokenizer)` (BOS included,
      as the trainer counts); max_len: the largest prompt bucket.
    Logs a warning with the count and the longest prompt when any is dropped;
    raises DataError when every prompt is too long.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be ≥ 1, got {max_len}")
    items = list(items)
    if not items:
        return [], 0
    lengths = [len(ids) for ids in encode_fn([_prompt_of(x) for x in items])]
    if len(lengths) != len(items):
        raise ValueError(f"encode_fn gave {len(lengths)} encodings for {len(items)} prompts")
    kept = [x for x, n in zip(items, lengths) if n <= max_len]
    dropped = len(items) - len(kept)
    if dropped:
        msg = (
            f"{source}: {dropped} of {len(items)} prompts are longer than {max_len} tokens "
            f"(the largest prompt bucket; longest {max(lengths)} tokens)"
        )
        if not kept:
            raise DataError(f"{msg}: none is left; raise the largest prompt bucket")
        logger.warning("%s: dropped", msg)
    return kept, dropped
