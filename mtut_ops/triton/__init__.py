"""Triton kernels of the mtut ops (the "triton" backend).

Importable without triton installed: it then registers nothing, and asking for
backend="triton" gives a clear error.
"""
