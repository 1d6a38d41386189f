"""A set of 64-bit hashes in one flat table: what a table of rows or a run's ids is checked
against for duplicates, in 16 to 32 bytes each instead of about 70 for a set of ints."""

from __future__ import annotations

from array import array


def hash64(value: object) -> int:
    """64 bits of Python's hash, never 0 (an empty slot of HashSet)."""
    return (hash(value) & 0xFFFF_FFFF_FFFF_FFFF) or 1


class HashSet:
    """A set of non-zero 64-bit hashes in one flat table (open addressing, at most half
    full): 16 to 32 bytes a row, where a set of Python ints takes about 70."""

    def __init__(self, size: int = 1 << 12):
        self.table = array("Q", bytes(8 * size))
        self.count = 0

    def add(self, key: int) -> bool:
        """Add KEY; True when it was there already."""
        i = self._slot(key)
        if self.table[i]:
            return True
        self.table[i] = key
        self.count += 1
        if self.count * 2 > len(self.table):
            self._grow()
        return False

    def __contains__(self, key: int) -> bool:
        return bool(self.table[self._slot(key)])

    def _slot(self, key: int) -> int:
        """Where KEY is, or the empty slot where it would go (linear probing)."""
        table, mask = self.table, len(self.table) - 1
        i = key & mask
        while table[i] and table[i] != key:
            i = (i + 1) & mask
        return i

    def _grow(self) -> None:
        old, self.table, self.count = self.table, array("Q", bytes(16 * len(self.table))), 0
        for key in old:
            if key:
                self.add(key)
