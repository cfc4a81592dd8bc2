"""The bounds of the routes' query values, shared by the routes that check them and the OpenAPI
document that states them."""

from __future__ import annotations

ON_DISCONNECT = ("continue", "cancel")
DEFAULT_PAGE, MAX_PAGE = 50, 500
MAX_ID = 2**62  # event ids and cursors: SQLite's integers are 64-bit
