"""The session language: model, parsing, validation, hashing, placeholders and decisions.

Everything here is pure: it takes text and data and returns models and decisions; no I/O.
"""
