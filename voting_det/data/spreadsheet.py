"""Reading and writing the "Dataset for Fetus Framework" box spreadsheet.

The public set (Cui and Dong 2022, Mendeley Data, CC-BY-4.0) stores every box in
one sheet of ``ObjectDetection.xlsx`` with the columns

    fname, structure, h_min, w_min, h_max, w_max

where ``h`` is the row (y) and ``w`` the column (x) of the image. The built-in
synthetic set is written in exactly this format, so the converter and the
loaders are exercised on it every day.
"""
import datetime
import io
import os
import zipfile
from typing import Iterable, List, NamedTuple, Sequence

__all__ = [
    "SPREADSHEET_COLUMNS",
    "SpreadsheetError",
    "SheetRow",
    "read_object_detection_xlsx",
    "write_object_detection_xlsx",
]

SPREADSHEET_COLUMNS = ("fname", "structure", "h_min", "w_min", "h_max", "w_max")

# A fixed timestamp for the workbook's metadata and its zip entries, so that the
# same rows always give a byte-identical file (reproducible synthetic sets).
_FIXED_TIME = datetime.datetime(2019, 10, 13, 0, 0, 0)


class SpreadsheetError(ValueError):
    """The spreadsheet cannot be read at all (not a workbook, wrong header)."""


class SheetRow(NamedTuple):
    """One data row as stored, with its 1-based spreadsheet row number.

    Values are kept as the workbook holds them (str, int, float or None); the
    converter validates them and reports every problem with ``row``.
    """

    row: int
    fname: object
    structure: object
    h_min: object
    w_min: object
    h_max: object
    w_max: object


def read_object_detection_xlsx(path: str) -> List[SheetRow]:
    """Read every data row of the first sheet of ``path``.

    The header row must name the six columns of :data:`SPREADSHEET_COLUMNS`
    (any order, case and surrounding spaces ignored; extra columns ignored).
    Fully empty rows are skipped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SpreadsheetError: the file is not a readable .xlsx workbook or its
            header lacks a required column (the message names the file and
            the missing columns).
    """
    import openpyxl

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: spreadsheet not found (expected ObjectDetection.xlsx)")
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many types for a broken file
        raise SpreadsheetError(
            f"{path}: not a readable .xlsx workbook ({type(e).__name__}: {e}); "
            "save it from a spreadsheet program as Excel .xlsx and retry"
        ) from e
    try:
        sheet = workbook.worksheets[0]
        rows = sheet.iter_rows(values_only=True)
        header = next(rows, None)
        if header is None:
            raise SpreadsheetError(f"{path}: the first sheet is empty; expected a header row {SPREADSHEET_COLUMNS}")
        names = [str(h).strip().lower() if h is not None else "" for h in header]
        missing = [c for c in SPREADSHEET_COLUMNS if c not in names]
        if missing:
            raise SpreadsheetError(
                f"{path}: header row 1 lacks column(s) {missing}; found {list(header)}, "
                f"expected {list(SPREADSHEET_COLUMNS)}"
            )
        index = [names.index(c) for c in SPREADSHEET_COLUMNS]
        result = []
        for number, values in enumerate(rows, start=2):
            values = tuple(values) + (None,) * max(0, len(names) - len(values))
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
                continue
            result.append(SheetRow(number, *(values[i] for i in index)))
        return result
    finally:
        workbook.close()


def write_object_detection_xlsx(path: str, rows: Iterable[Sequence]) -> None:
    """Write ``rows`` (fname, structure, h_min, w_min, h_max, w_max) to ``path``.

    The output is byte-identical for identical rows: the workbook's creation
    and modification times and the zip entries' timestamps are fixed. The file
    is written to a temporary name and renamed, so a crash never leaves a
    half-written spreadsheet.
    """
    import openpyxl

    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "Sheet"
    sheet.append(list(SPREADSHEET_COLUMNS))
    for r in rows:
        if len(r) != len(SPREADSHEET_COLUMNS):
            raise ValueError(f"row {r!r} has {len(r)} values, expected {len(SPREADSHEET_COLUMNS)}")
        sheet.append(list(r))
    workbook.properties.created = _FIXED_TIME
    workbook.properties.modified = _FIXED_TIME
    buffer = io.BytesIO()
    workbook.save(buffer)

    # Re-pack with fixed entry timestamps (openpyxl stamps them with "now").
    fixed = io.BytesIO()
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(fixed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = _pin_core_times(data)
            entry = zipfile.ZipInfo(info.filename, date_time=_FIXED_TIME.timetuple()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o600 << 16
            dst.writestr(entry, data)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(fixed.getvalue())
    os.replace(tmp, path)


def _pin_core_times(xml: bytes) -> bytes:
    """openpyxl rewrites dcterms:modified with the current time on save."""
    import re

    stamp = _FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    return re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)", rb"\g<1>" + stamp + rb"\g<2>", xml)
