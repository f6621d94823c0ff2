"""The store layer: the only code that knows whether it talks to SQLite or PostgreSQL.

`dialects.py` is the seam (`store_for(bind)` and what each database can do); `bulk.py`
the batch statements written once per database. Code above asks `store_for(conn)` what
the database can do, never its name (tests/test_architecture.py checks it).
"""

from reinstatement.store.dialects import Store, store_for

__all__ = ["Store", "store_for"]
