"""Built-in encoders and datasets, installed from ordinary packages (nothing is downloaded from a hub).

Every module that registers a built-in dataset is imported here, so ``DATASETS`` lists them all whichever
module a caller imports first (``polytask.catalog.datasets`` runs this file before its own).
"""

from polytask.catalog import datasets, movielens  # noqa: F401 - each registers its datasets where it defines them
