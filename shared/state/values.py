"""Values too big for a message travel through the object store (the claim-check pattern).

A value whose JSON is larger than ``bus.inline_bytes`` is stored in the object store
``fy_values`` under ``<run id>/<sha256 of its JSON>`` and, wherever it would have travelled (an
agent's output, a node's input, a run's outputs, the run record), replaced by a reference:
``{"$flowyard.value": NAME, "bytes": N}``. Content-addressed, so storing the same value again
writes nothing, and a reference means the same thing wherever it is. Whoever uses a value
resolves it first: the executor before an agent reads its input, the scheduler before a
template reads an output, the CLI and the API before they show one. See ADR 11.
"""

from __future__ import annotations

import hashlib
import io
from collections import OrderedDict
from typing import Any

import msgspec
import nats.js.errors

from shared.bus.connection import Bus
from shared.contract import subjects
from shared.contract.errors import PermanentError

REF = "$flowyard.value"
_encode = msgspec.json.Encoder(order="deterministic").encode
_decode = msgspec.json.decode
_KNOWN = 50_000  # object names known to exist, so a value kept step after step is put once
_SEEN_BYTES = 64 * 1024 * 1024  # values remembered as measured (or offloaded), by their size


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(REF), str) and len(value) <= 2


class ValueMissing(PermanentError):
    """A reference whose object is gone (deleted by an operator, or the store was reset)."""


class Values:
    """Offload and resolve values for one service; ``inline_bytes`` is where offloading starts."""

    def __init__(self, bus: Bus, inline_bytes: int) -> None:
        self.bus = bus
        self.inline_bytes = inline_bytes
        self._known: OrderedDict[str, None] = OrderedDict()
        # The same object offloaded again (a record's values at every step): no re-encoding. The
        # objects are kept (so their ids stay theirs), at most _SEEN_BYTES of them, oldest out.
        self._seen: OrderedDict[tuple[int, int], tuple[Any, Any, int]] = OrderedDict()
        self._seen_bytes = 0
        self.bytes_stored = 0  # what this process put into the store (the scale bench reads it)

    async def offload(self, run_id: str, value: Any, *, limit: int | None = None) -> Any:
        """``value`` itself when small (or already a reference), else a reference to a stored copy."""
        if value is None or isinstance(value, bool | int | float) or is_ref(value):
            return value
        limit = limit if limit is not None else self.inline_bytes
        if isinstance(value, str) and len(value) < limit // 6:
            return value  # cheap test first: even escaped (6 bytes a character) it is under the limit
        seen = self._seen.get((id(value), limit))
        if seen is not None and seen[0] is value:
            self._seen.move_to_end((id(value), limit))
            return seen[1]
        data = _encode(value)
        if len(data) <= limit:
            self._remember(value, limit, value, len(data))
            return value
        name = f"{run_id}/{hashlib.sha256(data).hexdigest()}"
        if name not in self._known:
            obs = await self.bus.js.object_store(subjects.VALUES_BUCKET)
            try:
                await obs.get_info(name)
            except nats.js.errors.ObjectNotFoundError:
                try:
                    await obs.put(name, data)
                except nats.js.errors.ServiceUnavailableError:
                    raise  # an outage: the caller's delivery is retried
                except nats.js.errors.APIError as exc:
                    raise PermanentError(
                        f"the value store refused a {len(data)}-byte value: {exc.description} "
                        "(bus.value_store_bytes holds all large values)"
                    ) from None
                self.bytes_stored += len(data)
            self._known[name] = None
            while len(self._known) > _KNOWN:
                self._known.popitem(last=False)
        ref = {REF: name, "bytes": len(data)}
        self._remember(value, limit, ref, len(data))
        return ref

    def _remember(self, value: Any, limit: int, result: Any, size: int) -> None:
        if isinstance(value, str) or size > _SEEN_BYTES // 4:
            return  # strings are cheap to measure; one huge value must not push out all the others
        key = (id(value), limit)
        if key in self._seen:
            self._seen_bytes -= self._seen.pop(key)[2]
        self._seen[key] = (value, result, size)
        self._seen_bytes += size
        while self._seen_bytes > _SEEN_BYTES or len(self._seen) > _KNOWN:
            self._seen_bytes -= self._seen.popitem(last=False)[1][2]

    async def resolve(self, value: Any) -> Any:
        """The value a reference stands for (anything else unchanged)."""
        if not is_ref(value):
            return value
        name = value[REF]
        obs = await self.bus.js.object_store(subjects.VALUES_BUCKET)
        out = io.BytesIO()
        try:
            # Into a buffer: without one nats-py concatenates the chunks into ever larger bytes.
            await obs.get(name, writeinto=out)
        except nats.js.errors.ObjectNotFoundError:
            raise ValueMissing(f"value {name!r} is no longer in the value store (fy_values)") from None
        self._known[name] = None
        return _decode(out.getvalue())

    async def resolve_all(self, values: dict[str, Any]) -> dict[str, Any]:
        """A mapping (a run's outputs) with each value resolved."""
        if not any(is_ref(v) for v in values.values()):
            return values
        return {k: await self.resolve(v) for k, v in values.items()}
