"""The signed, hash-chained audit log: its chain (pure), its writer and sinks, its verifier."""
