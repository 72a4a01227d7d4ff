"""Training: the one loop (``loop.py``) and the helpers it is built from."""
