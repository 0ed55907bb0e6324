"""Result files: the schema of every result kind with its version and loaders (`schema`), atomic
writes, naming and machine metadata (`store`), and the run document built from a run's samples
(`rundoc`). Reports and comparisons read results only through `schema`."""
