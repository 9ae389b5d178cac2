"""Read raw value-dataset files (JSONL, JSON, CSV, Parquet) or Hugging Face datasets into pandas.

Every failure becomes an :class:`IngestError` that names the file and, where it applies, the line,
row or byte offset, because a bad row in a 100k-line export is otherwise very hard to find.
Local paths and any fsspec URL (``s3://``, ``gs://``, ``memory://`` ...) go through the same code;
``storage_options`` are handed to fsspec unchanged (e.g. an S3 ``endpoint_url``).
"""

from __future__ import annotations

import io
import json
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from svgt.core.errors import BadInput

HF_PREFIX = "hf://"
FORMATS = ("jsonl", "json", "csv", "parquet")
_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")


class IngestError(BadInput):
    """A source could not be read or adapted; the message names the file, row and column."""


def read_table(
    path: str,
    *,
    storage_options: dict[str, Any] | None = None,
    split: str | None = None,
    fmt: str | None = None,
) -> pd.DataFrame:
    """Read one source into a DataFrame with the source's own columns.

    ``path`` is a local path, an fsspec URL or ``hf://NAME[:config]``; ``split`` only matters for
    Hugging Face datasets. ``fmt`` overrides the format guessed from the file suffix.
    """
    if path.startswith(HF_PREFIX):
        return read_hf(path, split=split)
    fmt = fmt or infer_format(path)
    data = _read_bytes(path, storage_options)
    if not data.strip():
        raise IngestError(f"{path}: empty file (no rows)")
    if fmt == "parquet":
        frame = parse_parquet(data, path)
    else:
        text = decode_utf8(data, path)
        frame = {"jsonl": parse_jsonl, "json": parse_json, "csv": parse_csv}[fmt](text, path)
    if frame.empty:
        raise IngestError(f"{path}: no data rows (the file has structure but no records)")
    return frame


def infer_format(path: str) -> str:
    """Guess the format from the suffix (ignoring a compression suffix such as ``.gz``)."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
    for suffix, fmt in _SUFFIX_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise IngestError(
        f"{path}: cannot tell the format from the file name; expected one of "
        f"{', '.join(sorted(_SUFFIX_FORMATS))} (optionally compressed)"
    )


def _read_bytes(path: str, storage_options: dict[str, Any] | None) -> bytes:
    """Fetch the whole file through fsspec (decompressing by suffix)."""
    try:
        with fsspec.open(path, "rb", compression="infer", **(storage_options or {})) as f:
            return f.read()
    except FileNotFoundError:
        raise IngestError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise IngestError(f"{path}: is a directory, expected a file") from None
    except PermissionError as err:
        raise IngestError(f"{path}: permission denied ({err})") from None
    except (OSError, EOFError) as err:
        raise IngestError(f"{path}: could not read ({type(err).__name__}: {err})") from None


def decode_utf8(data: bytes, path: str) -> str:
    """Strict UTF-8 decoding; a bad byte is reported with its line and byte offset.

    Silently replacing bytes would corrupt prompts in ways nobody notices later, so we refuse.
    A UTF-8 byte-order mark is accepted and dropped.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        line_start = data.rfind(b"\n", 0, err.start) + 1
        bad = data[err.start : err.end].hex(" ")
        raise IngestError(
            f"{path}: not valid UTF-8 at line {line}, byte offset {err.start} "
            f"(column byte {err.start - line_start + 1}, bytes {bad}): {err.reason}; "
            "re-encode the file as UTF-8"
        ) from None


def parse_jsonl(text: str, path: str) -> pd.DataFrame:
    """One JSON object per line; blank lines are skipped; a bad line is named by number."""
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise IngestError(
                f"{path}: line {lineno}: malformed JSON ({err.msg} at column {err.colno})"
            ) from None
        if not isinstance(record, dict):
            raise IngestError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return pd.DataFrame.from_records(records)


def parse_json(text: str, path: str) -> pd.DataFrame:
    """A JSON array of objects (or ``{"data": [...]}`` / ``{"rows": [...]}``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise IngestError(
            f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    if isinstance(data, dict):
        lists = [k for k in ("data", "rows", "records", "examples") if isinstance(data.get(k), list)]
        if not lists:
            raise IngestError(
                f"{path}: JSON object without a list of records (looked for keys "
                "data, rows, records, examples)"
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise IngestError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise IngestError(f"{path}: record {i}: expected a JSON object, got {type(record).__name__}")
    return pd.DataFrame.from_records(data)


def parse_csv(text: str, path: str) -> pd.DataFrame:
    """CSV with a header row. Leading lines starting with ``#`` are comments (PyRIT's eval files).

    Only the literal empty cell counts as missing: text such as "NA" or "None" stays text, since
    it can be a genuine prompt or answer.
    """
    lines = text.splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and lines[skipped].lstrip().startswith("#"):
        skipped += 1
    body = "".join(lines[skipped:])
    if not body.strip():
        raise IngestError(f"{path}: empty file (only comment lines, no header)")
    try:
        frame = pd.read_csv(io.StringIO(body), keep_default_na=False, na_values=[""])
    except pd.errors.ParserError as err:
        raise IngestError(f"{path}: malformed CSV ({skipped} comment line(s) skipped first): {err}") from None
    except pd.errors.EmptyDataError:
        raise IngestError(f"{path}: empty file (no header row)") from None
    return frame


def parse_parquet(data: bytes, path: str) -> pd.DataFrame:
    """Parquet bytes -> DataFrame; a truncated or corrupt file is reported as such."""
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise IngestError(
            f"{path}: not a valid Parquet file (missing PAR1 magic bytes at the "
            f"{'start' if data[:4] != b'PAR1' else 'end'}; the file is truncated or "
            f"corrupt, {len(data)} bytes)"
        )
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as err:
        raise IngestError(f"{path}: corrupt or truncated Parquet file ({len(data)} bytes): {err}") from None
    return table.to_pandas()


def parse_hf_path(path: str) -> tuple[str, str | None]:
    """``hf://NAME[:config]`` -> (NAME, config)."""
    spec = path[len(HF_PREFIX) :]
    name, _, config = spec.partition(":")
    if not name:
        raise IngestError(f"{path}: expected hf://DATASET_NAME[:config]")
    return name, config or None


def read_hf(path: str, split: str | None = None) -> pd.DataFrame:
    """Load ``hf://NAME[:config]`` with ``datasets.load_dataset`` (needs the Hugging Face Hub).

    Offline machines cannot reach the hub; the error then says so and how to work around it
    (export the dataset where the hub is reachable and point the source at the file).
    """
    name, config = parse_hf_path(path)
    split = split or "train"
    try:
        import datasets
    except ImportError:
        raise IngestError(f"{path}: reading hf:// sources needs the 'datasets' package") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # noqa: BLE001 - datasets raises many unrelated types for one cause
        raise IngestError(
            f"{path}: could not load Hugging Face dataset {name!r} (config {config!r}, split "
            f"{split!r}); the Hugging Face Hub is unreachable from here or the dataset is gated/"
            f"unknown ({type(err).__name__}: {str(err)[:300]}). Workaround: on a machine that "
            f"reaches the hub run `datasets.load_dataset({name!r}, {config!r}, split={split!r})"
            f".to_parquet('export.parquet')`, copy the file (or upload it to S3) and use that path "
            f"as the source."
        ) from None
    return ds.to_pandas()
