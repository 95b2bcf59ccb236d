"""Audits that start from a trained model and the team's own data (no canaries planted):
each is a library function that returns a typed report, which the CLI prints and gates on.

- ``scan``: real secrets found in the data, ranked in their own context (issue 22)
- ``memorization``: extractable memorization of training records and membership inference (issue 23)
"""
