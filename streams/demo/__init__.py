"""Built-in demo data: a small hand-written catalog and a generated event stream."""
