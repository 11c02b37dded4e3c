"""Randomness for jitter (heartbeats, ``retry:``, ``Retry-After``, backoff, lifetimes).

The package draws from a generator of its own: it never consumes nor perturbs the global
``random`` state, which an application (or a test framework) may have seeded.
"""

from __future__ import annotations

import random

_rng = random.Random()

uniform = _rng.uniform
randint = _rng.randint
