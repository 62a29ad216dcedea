"""Outside extensions of nml-bench, each one file found through its entry-point group.

- ``cosine.py``: the ``cosine`` head (``nmlbench.heads``).
"""
