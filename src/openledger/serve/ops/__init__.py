"""Attention ops: torch reference implementations beside the Triton kernels."""
