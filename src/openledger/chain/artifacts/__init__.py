"""Compiled ABI + bytecode JSON of the contracts (written by contracts/scripts/build.mjs)."""
