"""What a warm attempt's spool costs the executor: its claim before the input, its answer after,
and its removal, in microseconds per attempt, on a disk directory and on tmpfs.

    .venv/bin/python bench/spool.py [--attempts 3000] [--root PATH] [--dirs /tmp /dev/shm]

``--root`` imports the executor's code from another checkout (a worktree of an earlier commit),
so that one layout can be measured against another on the same machine in one sitting. Runs the
functions the process runtime calls (``warmio.prepare_spool``, ``finish_spool``, then the spool's
removal) one attempt after another in one thread, as one of the runtime's file threads does.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attempts", type=int, default=3000)
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--dirs", nargs="+", default=["/tmp", "/dev/shm"])
    args = ap.parse_args()
    sys.path.insert(0, args.root)
    from services.executor.runtimes import warmio
    from services.executor.runtimes.base import Outcome

    remove = getattr(warmio, "remove_spool", lambda spool: shutil.rmtree(spool, True))
    answer = Outcome(0, b'{"n": 1}\n', b"", 0.0)
    print(f"code from {args.root}; {args.attempts} attempts per directory")
    for base in args.dirs:
        root = Path(tempfile.mkdtemp(dir=base, prefix="fy-spool-bench-"))
        try:
            worker = root / "warm-bench"
            warmio.make_worker_dir(worker)
            (worker / "stderr").write_bytes(b"a log line\n" * 10)
            began = time.perf_counter()
            for i in range(args.attempts):
                spool = root / f"spool-{i}"
                stderr_from = warmio.prepare_spool(spool, worker, i + 1, time.time() + 60)
                assert stderr_from is not None
            prepared = time.perf_counter()
            for i in range(args.attempts):
                warmio.finish_spool(root / f"spool-{i}", worker, answer, 110, 16384)
            finished = time.perf_counter()
            for i in range(args.attempts):
                remove(root / f"spool-{i}")
            removed = time.perf_counter()
        finally:
            shutil.rmtree(root, True)
        each = 1e6 / args.attempts
        print(
            f"{base}: prepare {(prepared - began) * each:.0f} µs, finish {(finished - prepared) * each:.0f} µs, "
            f"remove {(removed - finished) * each:.0f} µs per attempt"
        )


if __name__ == "__main__":
    main()
