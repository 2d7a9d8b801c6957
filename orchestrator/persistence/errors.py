"""Database errors under names the layers above catch without importing the driver."""

from __future__ import annotations

import asyncpg

ValueRefusedError = asyncpg.DataError
"""PostgreSQL refused a value (a NUL character, an out-of-range date): the input is at fault, not the program."""
