"""The ObjectDetection.xlsx reader and writer, checked against openpyxl directly."""
import hashlib
import time

import openpyxl
import pytest

from voting_det.data.spreadsheet import (
    SPREADSHEET_COLUMNS,
    SpreadsheetError,
    read_object_detection_xlsx,
    write_object_detection_xlsx,
)

ROWS = [("0.png", "NT", 385, 257, 418, 464), ("1.png", "nasal bone", 10, 20, 30, 40)]


def test_written_file_is_what_openpyxl_reads(tmp_path):
    path = str(tmp_path / "ObjectDetection.xlsx")
    write_object_detection_xlsx(path, ROWS)
    sheet = openpyxl.load_workbook(path).worksheets[0]
    values = list(sheet.iter_rows(values_only=True))
    assert values[0] == SPREADSHEET_COLUMNS
    assert values[1:] == ROWS


def test_read_keeps_row_numbers_and_column_order(tmp_path):
    path = str(tmp_path / "x.xlsx")
    wb = openpyxl.Workbook()
    ws = wb.active
    # shuffled, padded and upper-cased header, an extra column, an empty row
    ws.append([" W_MAX", "fname", "structure", "h_min", "w_min", "h_max", "comment"])
    ws.append([464, "0.png", "NT", 385, 257, 418, "x"])
    ws.append([None, None, None, None, None, None, None])
    ws.append([40, "1.png", "palate", 10, 20, 30, None])
    wb.save(path)
    rows = read_object_detection_xlsx(path)
    assert [r.row for r in rows] == [2, 4]
    assert tuple(rows[0])[1:] == ("0.png", "NT", 385, 257, 418, 464)
    assert tuple(rows[1])[1:] == ("1.png", "palate", 10, 20, 30, 40)


def test_same_rows_give_byte_identical_files(tmp_path):
    a, b = str(tmp_path / "a.xlsx"), str(tmp_path / "b.xlsx")
    write_object_detection_xlsx(a, ROWS)
    time.sleep(1.1)  # zip and workbook timestamps have 1-2 s resolution
    write_object_detection_xlsx(b, ROWS)
    digest = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (a, b)]
    assert digest[0] == digest[1]


def test_missing_column_is_named(tmp_path):
    path = str(tmp_path / "bad.xlsx")
    wb = openpyxl.Workbook()
    wb.active.append(["fname", "structure", "h_min", "w_min", "h_max"])
    wb.save(path)
    with pytest.raises(SpreadsheetError, match=r"w_max"):
        read_object_detection_xlsx(path)


def test_not_a_workbook_and_missing_file(tmp_path):
    path = tmp_path / "ObjectDetection.xlsx"
    path.write_text("fname,structure\n")
    with pytest.raises(SpreadsheetError, match="not a readable .xlsx"):
        read_object_detection_xlsx(str(path))
    with pytest.raises(FileNotFoundError, match="nothere.xlsx"):
        read_object_detection_xlsx(str(tmp_path / "nothere.xlsx"))
