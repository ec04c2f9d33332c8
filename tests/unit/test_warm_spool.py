"""A warm attempt's spool: one file that names its worker and line, then holds its answer."""

from __future__ import annotations

from pathlib import Path

from services.executor.runtimes import warmio
from services.executor.runtimes.base import Outcome


def worker(tmp_path: Path, answers: bytes = b"", stderr: bytes = b"") -> Path:
    home = tmp_path / "warm-agent-1"
    warmio.make_worker_dir(home)
    (home / "stdout").write_bytes(answers)
    (home / "stderr").write_bytes(stderr)
    return home


def test_a_claim_then_an_answer_is_read_back_the_same_and_a_second_claim_is_refused(tmp_path: Path) -> None:
    home = worker(tmp_path, stderr=b"earlier run's log\n")
    spool = tmp_path / "r1-n-1"
    stderr_from = warmio.prepare_spool(spool, home, 3, 1e12)
    assert stderr_from == len(b"earlier run's log\n")
    assert warmio.prepare_spool(spool, home, 4, 1e12) is None  # a second delivery adopts instead
    (home / "stderr").write_bytes(b"earlier run's log\nmine\n")
    err, size = warmio.finish_spool(spool, home, Outcome(0, b'{"n": 1}\n', b"", 0.1), stderr_from, 1024)
    assert err == b"mine\n" and size == len(b"earlier run's log\nmine\n")  # never another attempt's log
    assert spool.is_file() and spool.read_bytes().count(b"\n") == 2
    read = warmio.recorded(spool)
    assert read is not None and (read.exit_code, read.stdout, read.stderr_tail) == (0, b'{"n": 1}\n', b"mine\n")


def test_an_overflowing_answer_reads_back_as_overflowing_not_as_empty(tmp_path: Path) -> None:
    spool = tmp_path / "r1-n-1"
    home = worker(tmp_path)
    warmio.finish_spool(
        spool,
        home,
        Outcome(0, b"", b"", 0.1, stdout_overflow=True),
        warmio.prepare_spool(spool, home, 1, 1e12) or 0,
        64,
    )
    read = warmio.recorded(spool)
    assert read is not None and read.stdout_overflow


async def test_a_recorded_answer_is_adopted_after_its_worker_is_gone(tmp_path: Path) -> None:
    home = worker(tmp_path)
    spool = tmp_path / "r1-n-1"
    warmio.finish_spool(spool, home, Outcome(3, b"", b"", 0.1), warmio.prepare_spool(spool, home, 1, 1e12) or 0, 64)
    for f in home.iterdir():
        if f.is_file():
            f.unlink()
    adopted = await warmio.adopt(spool)
    assert adopted is not None and adopted.exit_code == 3


async def test_a_claim_cut_by_a_crash_starts_the_attempt_afresh(tmp_path: Path) -> None:
    spool = tmp_path / "r1-n-1"
    spool.write_bytes(b'{"worker": "/x", "li')  # the executor died writing it: no input was sent
    assert await warmio.adopt(spool) is warmio.AFRESH
    assert not spool.exists()


async def test_an_answer_cut_by_a_crash_is_read_from_the_worker_and_recorded_whole(tmp_path: Path) -> None:
    home = worker(tmp_path, answers=b'{"first": 1}\n{"second": 2}\n', stderr=b"log\n")
    spool = tmp_path / "r1-n-2"
    assert warmio.prepare_spool(spool, home, 2, 1e12) == 4
    with spool.open("ab") as f:
        f.write(b'{"exit_code": 0, "std')  # cut mid-write
    assert warmio.recorded(spool) is None
    adopted = await warmio.adopt(spool)
    assert adopted is not None and adopted.stdout == b'{"second": 2}\n'
    again = warmio.recorded(spool)  # a later redelivery reads it without the worker
    assert again is not None and again.stdout == b'{"second": 2}\n'


async def test_a_spool_of_the_earlier_layout_is_still_adopted(tmp_path: Path) -> None:
    # An executor upgraded while a warm attempt was in flight must not run it again.
    home = worker(tmp_path, answers=b'{"ok": true}\n')
    spool = tmp_path / "r1-n-1"
    spool.mkdir()
    (spool / "deadline").write_text(repr(1e12))
    (spool / "warm").write_text(f"{home}\n1\n0\n")
    adopted = await warmio.adopt(spool)
    assert adopted is not None and adopted.stdout == b'{"ok": true}\n'
    assert (spool / "rc").read_text() == "0" and (spool / "stdout").read_bytes() == b'{"ok": true}\n'


async def test_a_cold_attempts_spool_is_not_taken_for_a_warm_one(tmp_path: Path) -> None:
    spool = tmp_path / "r1-n-1"
    spool.mkdir()
    (spool / "pid").write_text("1")
    assert await warmio.adopt(spool) is None
    assert spool.is_dir()
