"""The backup drill's analysis (pgha.backupdrill): the marks record, the target, the loss window."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgha import backupdrill as bd
from pgha.model import lsn_to_int

WAL = "0000000100000000000000"


def record(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "marks"
    p.write_text("\n".join(lines) + "\n")
    return p


def mark(i: int, started: float, wal: int, archived: int | None, archived_at: float | None = None) -> str:
    a = "-" if archived is None else f"{WAL}{archived:02X}"
    at = "-" if archived_at is None else str(archived_at)
    return f"mark {i} {started:.6f} {started + 0.004:.6f} 0/{wal:X}000100 {WAL}{wal:02X} {a} {at}"


def test_the_record_reads_back_with_errors_unsure_rows_and_the_archive_wait(tmp_path: Path) -> None:
    m = bd.load_marks(record(tmp_path, ["start 100.0", mark(1, 100.0, 3, None), "err 101.2 server closed the connection",
                                        "unsure 2", mark(3, 102.0, 3, 2, 99.0), "stop 103.0",
                                        f"archived {WAL}03"]))
    assert [x.i for x in m.marks] == [1, 3] and m.unsure == {2}
    assert m.marks[0].archived_wal == "" and m.marks[0].archived_at is None
    assert m.marks[1].archived_at == 99.0 and m.marks[1].lsn == "0/3000100"
    assert m.errors == [(101.2, "server closed the connection")]
    assert (m.started, m.stopped, m.archived_wal, m.archive_waited) == (100.0, 103.0, f"{WAL}03", True)


def test_positions_of_lsns_and_wal_files() -> None:
    assert lsn_to_int("0/3000028") == 0x3000028
    assert lsn_to_int("1/0") == 1 << 32
    assert bd.segment_lsn("000000020000000100000003") == (1 << 32) + 3 * 16 * 1024 * 1024


def test_the_target_lies_between_two_archived_rows_written_after_the_backup(tmp_path: Path) -> None:
    lines = ["start 99.0"] + [mark(i, 100.0 + i, 3 + i // 4, 2) for i in range(1, 11)] + [f"archived {WAL}06"]
    m = bd.load_marks(record(tmp_path, lines))
    p = bd.plan(m, backup_stop=104.5)  # rows 5..10 come after the backup
    assert (p["last_row"], p["next_row"]) == (7, 8)  # halfway among the pairs (5,6) .. (9,10)
    assert 107.004 < p["target_epoch"] < 108.0 and p["margin_s"] > 0.4
    assert p["expected_rows"] == 7 and p["rows_written"] == 10 and p["target_lsn"] == "0/4000100"
    assert p["target_time"].startswith("1970-01-01 00:01:47.") and p["target_time"].endswith("+00:00")
    assert bd.plan(m, 104.5, fraction=0)["last_row"] == 5
    assert bd.plan(m, 104.5, fraction=1)["last_row"] == 9


def test_no_target_without_archived_rows_after_the_backup(tmp_path: Path) -> None:
    lines = [mark(i, 100.0 + i, 3, 2) for i in range(1, 6)]
    with pytest.raises(ValueError, match="never seen archived"):
        bd.plan(bd.load_marks(record(tmp_path, lines)), backup_stop=101.5)
    with pytest.raises(ValueError, match="0 rows after it"):
        bd.plan(bd.load_marks(record(tmp_path, lines + [f"archived {WAL}03"])), backup_stop=200.0)
    # the next row's WAL file was not archived: a target before it could not be reached
    with pytest.raises(ValueError, match="no two consecutive"):
        bd.plan(bd.load_marks(record(tmp_path, lines + [mark(6, 106.0, 4, 3), f"archived {WAL}03"])), 104.5)


def test_exposure_counts_the_writes_not_yet_in_the_archive(tmp_path: Path) -> None:
    # rows 1-3 in WAL file 3, archived by the time row 4 is written; rows 4-5 in file 4, not archived yet
    lines = [mark(1, 100.0, 3, 2, 99.0), mark(2, 101.0, 3, 2, 99.0), mark(3, 102.0, 3, 2, 99.0),
             mark(4, 103.0, 4, 3, 102.5), mark(5, 104.0, 4, 3, 102.5)]
    e = bd.exposure(bd.load_marks(record(tmp_path, lines)))
    assert e["series"]["at_risk_s"] == [0.0, 1.0, 2.0, 0.0, 1.0]
    assert e["writes_at_risk_s"] == {"median": 1.0, "max": 2.0}
    assert e["archive_age_s"]["max"] == round(102.004 - 99.0, 3)
    assert bd.exposure(bd.Marks())["writes_at_risk_s"] == {"median": None, "max": None}


def test_compare_finds_missing_and_extra_rows_and_ignores_unsure_ones() -> None:
    assert bd.compare([1, 2, 3], [1, 2, 3]) | {"missing_rows": [], "extra_rows": []} == {
        "expected": 3, "found": 3, "missing": 0, "extra": 0, "missing_rows": [], "extra_rows": []}
    c = bd.compare([1, 2, 3, 4], [1, 3, 4, 5, 6], unsure={4, 6})
    assert (c["missing_rows"], c["extra_rows"], c["expected"], c["found"]) == ([2], [5], 3, 3)
