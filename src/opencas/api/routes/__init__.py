"""The API's routes, one module per noun: the CAS itself, its owner, sessions, workloads."""
