"""The benchmark (`make bench`, `python -m bench`): a tool beside the runtime, not part of it."""
