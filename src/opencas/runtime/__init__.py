"""The workload runtime behind ``casctl run``: measure a program, attest it, launch it."""
