"""Outside models as denoisers: diffusers UNets (``diffusers.py``)."""
