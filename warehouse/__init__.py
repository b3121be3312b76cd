"""Warehouse: the DuckDB schema, loading (raw -> typed -> clean), state and queries."""

from warehouse.store import Warehouse, WarehouseError

__all__ = ["Warehouse", "WarehouseError"]
