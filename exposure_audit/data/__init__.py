"""Data: canary formats (``formats``), corpora and the insertion into them (``corpus``, ``records``),
the canary manifest (``manifest``) and the folder an insert writes (``pipeline``)."""
