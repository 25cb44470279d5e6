"""The images of one viewer session, in memory, in upload order. Nothing is
kept on disk: an upload is read from a temporary file deleted at once, and
everything is gone when the viewer stops (download the CSV first)."""
import threading
from collections import OrderedDict
from typing import List, Optional

from .analysis import Item

__all__ = ["ItemStore", "StoreFullError"]


class StoreFullError(Exception):
    """The viewer holds its maximum number of images."""


class ItemStore:
    def __init__(self, max_items: int):
        self.max_items = max_items
        self._items: "OrderedDict[str, Item]" = OrderedDict()
        self._lock = threading.Lock()

    def check_room(self) -> None:
        """Raise :class:`StoreFullError` (saying what to do) when full."""
        if len(self._items) >= self.max_items:
            raise StoreFullError(f"the viewer holds {self.max_items} images, its maximum (tools/serve.py "
                                 "--max-images); download the CSV, then remove images (or restart it with a "
                                 "higher --max-images)")

    def add(self, item: Item) -> Item:
        with self._lock:
            self.check_room()
            self._items[item.id] = item
        return item

    def get(self, item_id: str) -> Optional[Item]:
        return self._items.get(item_id)

    def remove(self, item_id: str) -> bool:
        with self._lock:
            return self._items.pop(item_id, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def items(self) -> List[Item]:
        with self._lock:
            return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)
