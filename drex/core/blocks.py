"""Paged-KV accounting: fixed-size blocks handed to requests from a free list.

The simulator needs only the counts; the real backend uses the block ids as its
block tables. Capacity comes from device memory minus weights.
"""

from __future__ import annotations


def num_kv_blocks(mem_bytes: int, weight_bytes: int, kv_bytes_per_token: int, block_size: int,
                  mem_utilization: float = 0.9) -> int:
    """Blocks that fit in the memory left after weights (vLLM's gpu_memory_utilization idea)."""
    free = mem_bytes * mem_utilization - weight_bytes
    if free <= 0:
        raise ValueError(f"model weights ({weight_bytes / 2**30:.1f} GiB) do not fit in "
                         f"{mem_utilization:.0%} of device memory ({mem_bytes / 2**30:.1f} GiB)")
    n = int(free // (kv_bytes_per_token * block_size))
    if n < 1:
        raise ValueError("no room for a single KV block after the weights")
    return n


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self.tables: dict[int, list[int]] = {}
        self.peak_used = 0

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def needed(self, request_id: int, num_tokens: int) -> int:
        """New blocks a request needs to hold num_tokens in total."""
        have = len(self.tables.get(request_id, ()))
        return max(0, self.blocks_for(num_tokens) - have)

    def allocate(self, request_id: int, num_tokens: int) -> bool:
        """Grow the request's table to hold num_tokens; False (and no change) if blocks run out."""
        table = self.tables.get(request_id)
        n = -(-num_tokens // self.block_size) - (len(table) if table else 0)  # needed(), inlined: hot
        if n <= 0:
            return True
        free = self._free
        if n > len(free):
            return False
        taken = free[-n:]
        del free[-n:]
        taken.reverse()  # as n pop()s would
        if table is None:
            self.tables[request_id] = taken
        else:
            table.extend(taken)
        used = self.num_blocks - len(free)
        if used > self.peak_used:
            self.peak_used = used
        return True

    def trim(self, request_id: int, num_tokens: int) -> None:
        """Give back the blocks beyond what num_tokens need (taken ahead for steps that did not run)."""
        table = self.tables.get(request_id)
        keep = self.blocks_for(num_tokens)
        if table and len(table) > keep:
            self._free.extend(reversed(table[keep:]))
            del table[keep:]

    def free(self, request_id: int) -> None:
        table = self.tables.pop(request_id, None)
        if table:
            self._free.extend(reversed(table))

    def capacity_tokens(self, request_id: int) -> int:
        return len(self.tables.get(request_id, ())) * self.block_size
