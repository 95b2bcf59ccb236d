"""Audits: each is a library function that returns a typed report, which the CLI prints and gates on.

- ``canaries``: the Secret Sharer audit of planted canaries (insert, train, measure, extract) and sweeps
- ``dp_audit``, ``privacy_audit``, ``canary_design``: check a DP claim with canaries planted with
  probability 1/2
- ``scan``: real secrets found in the data, ranked in their own context (issue 22); ``scan_measure``
  ranks them, ``scan_types`` holds what the two share (options, a finding's measurement, masking)
- ``memorization``: extractable memorization of training records and membership inference (issue 23)
"""
