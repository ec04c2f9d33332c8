"""The helper containers of an agent's Pod (kubernetes runtime, docs/adr/0012), run from flowyard's image.

``unpack SRC DEST``: the init container — the workspace version from the attempt's Secret
(``SRC/workspace.tgz``) written out into the Pod's workspace volume.
``collect WORKSPACE OUT MAX_BYTES``: beside the agent of an ``rw`` workspace — waits for the
wrapper to write the agent's exit status, then prints what the agent left, packed and base64 on
one line, for the executor to read from this container's log. Nothing when the agent failed.
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

from shared.state import workspace as ws


def unpack(src: str, dest: str) -> int:
    packed = Path(src) / "workspace.tgz"
    if packed.exists():  # no key: the agent starts with an empty workspace
        ws.unpack_to_dir(packed.read_bytes(), dest)
    return 0


def collect(workspace: str, out: str, max_bytes: int) -> int:
    status = Path(out) / "exit"
    # The agent's own timeout bounds this: the executor removes the Pod when it gives up.
    while not status.exists():
        time.sleep(0.2)
    if status.read_text().strip() != "0":
        return 0
    try:
        packed = ws.pack_dir(workspace, max_bytes=max_bytes)
    except ws.WorkspaceError as exc:
        print(f"flowyard: {exc}", file=sys.stderr)
        return 3
    sys.stdout.write(base64.b64encode(packed).decode() + "\n")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "unpack":
        return unpack(argv[1], argv[2])
    if len(argv) == 4 and argv[0] == "collect":
        return collect(argv[1], argv[2], int(argv[3]))
    print("usage: podinit unpack SRC DEST | collect WORKSPACE OUT MAX_BYTES", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
