"""Built-in encoders and datasets, installed from ordinary packages (nothing is downloaded from a hub)."""
