"""Reading text sources (YAML, TOML, JSON) into plain data, and saying where they are wrong.

Every reader reports what it refuses as :class:`~opencas.sources.problems.Problem` values: the
text's name, the line and column, the key and what is wrong. The configs (``config/``) and the
session language (``policy/``) read their texts here and raise their own errors with those
problems; the API shows them as ``problems[]``.
"""
