"""Ids of new steps: UUIDs in time order (RFC 9562 version 7), not random ones.

A random (version 4) key puts every insert on a random leaf page of its index: with a history larger than
`shared_buffers`, each insert reads a page from disk and writes a full-page image to the WAL. Step ids that grow
with time insert next to each other in `process_steps_pkey`, at the same cost on a full database as on an empty one.
Process ids stay random: people tell processes apart by the first characters of their id (the dashboard shows
eight), which time-ordered ids share for about a minute.
"""

from __future__ import annotations

import os
import random
import time
from uuid import UUID

_VERSION = 0x7 << 76
_VARIANT = 0x2 << 62
_RANDOM_BITS = ~((0xF << 76) | (0x3 << 62)) & ((1 << 80) - 1)

_random = random.Random()
"""Our own generator, seeded from the OS: a workflow step that calls `random.seed(0)` must not make every step id
of one millisecond the same. Seeded again in each forked process (Dramatiq forks its workers)."""
os.register_at_fork(after_in_child=_random.seed)


def time_ordered_uuid() -> UUID:
    """A version 7 UUID: 48 bits of Unix time in milliseconds, then 74 random bits (ordered to the millisecond).

    The random bits come from a `random.Random` of our own (seeded from the OS), not `os.urandom`: a step id
    needs to be unique, not unguessable, and `os.urandom` is a system call that lets go of the GIL, so in a Dramatiq
    worker the event loop waited for its threads to hand it back (py-spy: 7 % of the loop's samples)."""
    millis = time.time_ns() // 1_000_000
    bits = _random.getrandbits(80) & _RANDOM_BITS
    return UUID(int=(millis & 0xFFFF_FFFF_FFFF) << 80 | _VERSION | _VARIANT | bits)
