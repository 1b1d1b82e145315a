"""Why a kubeconfig file cannot be read, in words, shared by the operator and the CLI.

The Kubernetes client reports a kubeconfig that is not YAML with the parser's multi-line
message, and one that is YAML but not a mapping (a bare string, a list) with a TypeError
from deep inside its merging code.
"""

from __future__ import annotations


def kubeconfig_problem(exc: BaseException) -> str | None:
    """One line for an unreadable kubeconfig, None when `exc` is not about its content."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - the Kubernetes client depends on PyYAML
        yaml = None  # type: ignore[assignment]
    if yaml is not None and isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        return f"not valid YAML: {exc.problem}{where}"
    if yaml is not None and isinstance(exc, yaml.YAMLError):
        return "not valid YAML: " + " ".join(str(exc).split())
    if isinstance(exc, TypeError | AttributeError):
        return "not a kubeconfig (a YAML mapping with clusters, contexts and users)"
    return None
