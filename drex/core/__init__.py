"""The shared brain: requests, paged-KV accounting, scheduler, policies.

Nothing here imports torch or simpy or reads a clock: time is handed in as ``now``.
"""
