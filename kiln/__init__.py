"""kiln: a declarative language for neural-network models, and its compiler."""
