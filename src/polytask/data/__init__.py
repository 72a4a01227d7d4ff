"""Reading data files, turning rows into task features, batching across tasks."""
