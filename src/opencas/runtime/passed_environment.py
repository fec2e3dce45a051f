"""Which variables of casctl's own environment ``casctl run`` passes to the workload.

The measurement says what code runs; a variable that makes the loader, an interpreter or a
shell load or run other code would run code that nobody measured, with the secrets the CAS
sent. So ``--pass-env`` refuses such names, and says why. The session's own ``environment`` is
not checked: the session is the policy, and what it sets was attested with it.

``PATH``, ``HOME``, ``LANG`` and ``TERM`` are always passed (the session may set its own):
the measured executable is resolved before it runs, so ``PATH`` does not choose it (docs/
workloads.md says what ``PATH`` and ``HOME`` still reach).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

ALWAYS_PASSED: Final = ("PATH", "HOME", "LANG", "TERM")
"""Passed from casctl's environment to every workload unless the session sets them."""

_LOADER = "the dynamic loader reads it (it can load other libraries or change how they load)"
_PYTHON = "Python reads it at start (module paths, start-up files, options)"
_PERL = "Perl reads it (module paths and options)"
_RUBY = "Ruby reads it (load paths, required libraries, gems)"
_NODE = "Node.js reads it (preloaded modules, module paths)"
_JAVA = "the JVM reads it (agents, options, class paths)"
_SHELL = "a shell runs or reads it at start (start-up files, options, functions, word splitting)"
_GLIBC = "the C library reads it (allocator and tunables, conversion and locale modules)"
_OPENSSL = "OpenSSL reads it (its configuration loads engines and providers)"
_OTHER = "an interpreter reads it to find or run code"

REFUSED_PREFIXES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "LD_": _LOADER,
        "DYLD_": _LOADER,
        "PYTHON": _PYTHON,
        "PERL5": _PERL,
        "RUBY": _RUBY,
        "NODE_": _NODE,
        "BASH_FUNC_": _SHELL,
        "MALLOC_": _GLIBC,
        "LUA_": _OTHER,
    }
)
"""A name starting with one of these is refused, for the reason given."""

REFUSED_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "PERLLIB": _PERL,
        "PERLIO": _PERL,
        "GEM_HOME": _RUBY,
        "GEM_PATH": _RUBY,
        "BUNDLE_GEMFILE": _RUBY,
        "JAVA_TOOL_OPTIONS": _JAVA,
        "_JAVA_OPTIONS": _JAVA,
        "JDK_JAVA_OPTIONS": _JAVA,
        "CLASSPATH": _JAVA,
        "BASH_ENV": _SHELL,
        "ENV": _SHELL,
        "SHELLOPTS": _SHELL,
        "BASHOPTS": _SHELL,
        "IFS": _SHELL,
        "PS4": _SHELL,
        "PROMPT_COMMAND": _SHELL,
        "GLIBC_TUNABLES": _GLIBC,
        "GCONV_PATH": _GLIBC,
        "LOCPATH": _GLIBC,
        "NLSPATH": _GLIBC,
        "OPENSSL_CONF": _OPENSSL,
        "OPENSSL_ENGINES": _OPENSSL,
        "OPENSSL_MODULES": _OPENSSL,
        "TCLLIBPATH": _OTHER,
        "PHPRC": _OTHER,
        "PHP_INI_SCAN_DIR": _OTHER,
    }
)
"""These names are refused, for the reason given."""


def refusal_reason(name: str) -> str | None:
    """Why ``--pass-env NAME`` is refused, or ``None`` when ``name`` may be passed."""
    if name in REFUSED_NAMES:
        return REFUSED_NAMES[name]
    return next(
        (reason for prefix, reason in REFUSED_PREFIXES.items() if name.startswith(prefix)), None
    )


def check_passable(name: str) -> None:
    """:class:`ValueError` saying why, when ``name`` changes what code the workload runs."""
    reason = refusal_reason(name)
    if reason is not None:
        raise ValueError(
            f"{name} is not passed to an attested program: {reason}, so the program could run "
            "code that was not measured. If the workload needs it, set it in the session's "
            "environment, where it is part of what was attested"
        )
