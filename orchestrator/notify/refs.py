"""A webhook's URL and signing secret, read by reference (spec.notify's `env`, `file` + `key`) when a notification
is sent: the values are held in memory for the request and never written anywhere. Messages name the variable,
the file and the key, never a value. The machinery is entrypoint.env_from's (orchestrator/intake/secrets.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from orchestrator.intake.secrets import SecretSourceError, read_env_file, resolve_path
from orchestrator.spec.models import SecretRef, Webhook
from orchestrator.spec.text import controls

_UNSAFE = controls()


def named(ref: SecretRef) -> str:
    """How a message names the reference (never its value)."""
    if ref.env is not None:
        return f"variable {ref.env}"
    if ref.file is not None:
        return f"{ref.key} in {ref.file}"
    return f"key {ref.key} of Secret {ref.secret}"


def value(ref: SecretRef, environ: Mapping[str, str], workdir: str) -> str:
    """The referenced value; SecretSourceError (naming the reference) when it cannot be read here."""
    if ref.env is not None:
        if ref.env not in environ:
            raise SecretSourceError(f"{ref.env} is not set in the environment of this shardctl process")
        return environ[ref.env]
    if ref.file is not None:
        assert ref.key is not None  # the model asks for one with `file`
        found = read_env_file(resolve_path(ref.file, workdir))
        if ref.key not in found:
            raise SecretSourceError(f"{ref.file} has no line {ref.key}=...")
        return found[ref.key]
    raise SecretSourceError(f"a Kubernetes Secret ({ref.secret}) cannot be read here")


def url_problem(url: str) -> str | None:
    """Why a resolved URL cannot be posted to (None when it can), in words that never repeat it."""
    if _UNSAFE.search(url) or " " in url:
        return "holds spaces or control characters"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL with a host"
    return None


def webhook_url(hook: Webhook, environ: Mapping[str, str], workdir: str) -> str:
    """The webhook's URL, checked; SecretSourceError otherwise."""
    url = value(hook.url, environ, workdir).strip()
    if (why := url_problem(url)) is not None:
        raise SecretSourceError(f"the webhook URL ({named(hook.url)}) {why}")
    return url


def signing_secret(hook: Webhook, environ: Mapping[str, str], workdir: str) -> str | None:
    if hook.signing_secret is None:
        return None
    secret = value(hook.signing_secret, environ, workdir)
    if not secret:
        raise SecretSourceError(f"the signing secret ({named(hook.signing_secret)}) is empty")
    return secret


def check(hook: Webhook, environ: Mapping[str, str], workdir: str) -> list[tuple[str, str]]:
    """(field, why) for each reference of the webhook that cannot be used here: what submit refuses. A Secret's
    value is the controller's to read, in the cluster (controller/notify.py): nothing to check here."""
    out: list[tuple[str, str]] = []
    if hook.url.kind == "secret":  # the rules allow a Secret on target kubernetes only, and both refs alike
        return out
    try:
        webhook_url(hook, environ, workdir)
    except SecretSourceError as exc:
        out.append((f"url.{hook.url.kind}", str(exc)))
    try:
        signing_secret(hook, environ, workdir)
    except SecretSourceError as exc:
        assert hook.signing_secret is not None
        out.append((f"signing_secret.{hook.signing_secret.kind}", str(exc)))
    return out
