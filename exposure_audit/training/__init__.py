"""Training: the loop over an insert folder (``loop``), its metrics file (``metrics``) and exposure
measured while a model learns (``tracking``)."""
