"""Where a model's config.json comes from: a local path, the local Hugging Face cache, or the Hub.

`spec.model.name_or_path` is a directory, a JSON file or a Hub id (`meta-llama/Llama-2-7b-hf`). A Hub
id is looked up in the cache first (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
`~/.cache/huggingface/hub`; layout `models--ORG--NAME/refs/main` -> `snapshots/<commit>/config.json`),
read with the standard library so that the planner needs no extra package; only where asked
(`shardctl plan`, never an executor) and not offline (`HF_HUB_OFFLINE`) is the Hub asked, through
huggingface_hub (imported then, and only then), with a short timeout. Every read is bounded: a
config.json over MAX_BYTES, a FIFO or a device is refused, never read into memory or waited on.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import ModelConfigError

MAX_BYTES = 4 << 20  # real configs are a few KiB; the largest seen (with vision/audio sub-configs) under 100 KiB
HUB_TIMEOUT_S = 5.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class FoundConfig:
    data: dict[str, Any]
    source: str  # where it was read, for the user: "local file ...", "Hugging Face cache ...", "Hugging Face Hub ..."
    path: str  # the file read (the one a meta-device count reads again)


@dataclass(frozen=True)
class Lookup:
    found: FoundConfig | None
    missing: str | None = None  # why there is none, in words (where it was looked for)


def read_json(path: str | Path, limit: int = MAX_BYTES) -> dict[str, Any]:
    """A JSON object from a regular file of at most `limit` bytes; NaN and Infinity are refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ModelConfigError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise ModelConfigError(f"{path}: {info.st_size} bytes, over the {limit}-byte limit for a config.json")
        data = b""
        while len(data) <= limit:  # the size may change under us: read at most limit + 1
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ModelConfigError(f"{path}: over the {limit}-byte limit for a config.json")

    def refuse(constant: str) -> float:
        raise ValueError(f"{constant} is not a number a config can hold")

    try:
        value = json.loads(data, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        raise ModelConfigError(f"{path}: not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ModelConfigError(f"{path}: not a JSON object")
    return value


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name and "--" not in name


def hub_cache() -> Path:
    """The hub cache huggingface_hub itself uses, from the environment as it is now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def offline() -> bool:
    return any((os.environ.get(v) or "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def from_cache(repo_id: str, revision: str = "main") -> Path | None:
    """The cached config.json of a Hub model: the snapshot `refs/<revision>` names, else the newest
    snapshot that has one."""
    repo = hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / revision
    try:
        commit = ref.read_text(errors="replace")[:100].strip() if ref.is_file() else ""
    except OSError:
        commit = ""
    if commit and re.fullmatch(r"[0-9a-f]{40}", commit):
        candidate = repo / "snapshots" / commit / "config.json"
        if candidate.exists():
            return candidate
    try:
        snapshots = sorted((p for p in (repo / "snapshots").iterdir() if (p / "config.json").exists()),
                           key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return None
    return snapshots[0] / "config.json" if snapshots else None


def from_hub(repo_id: str, revision: str = "main", timeout_s: float = HUB_TIMEOUT_S) -> tuple[Path | None, str]:
    """Download config.json (and nothing else) into the cache; (its path, "") or (None, why not). The
    size the Hub reports is checked before anything is downloaded."""
    try:
        from huggingface_hub import errors as hub_errors
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    except ImportError:
        return None, "huggingface_hub is not installed to ask the Hub (pip install huggingface_hub)"
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it once, at import
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, "config.json", revision=revision, endpoint=endpoint),
                                    timeout=timeout_s)
        if meta.size is not None and meta.size > MAX_BYTES:
            raise ModelConfigError(f"{repo_id}: the Hub's config.json is {meta.size} bytes, over the "
                                   f"{MAX_BYTES}-byte limit")
        path = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=hub_cache(),
                               endpoint=endpoint, etag_timeout=timeout_s)
    except ModelConfigError:
        raise
    except hub_errors.GatedRepoError:
        return None, f"{repo_id} is gated on the Hub: accept its licence and log in (`hf auth login`)"
    except hub_errors.RepositoryNotFoundError:
        return None, f"the Hub has no model {repo_id} (or it is private: log in with `hf auth login`)"
    except hub_errors.LocalEntryNotFoundError as exc:
        return None, f"the Hub cannot be reached ({str(exc)[:160]})"
    except hub_errors.EntryNotFoundError:
        return None, f"{repo_id} on the Hub has no config.json"
    except Exception as exc:  # noqa: BLE001 - whatever the network does, the plan says it and goes on
        return None, f"the Hub cannot be reached ({type(exc).__name__}: {str(exc)[:160]})"
    return Path(path), ""


def find(name_or_path: str, hub: bool = False) -> Lookup:
    """config.json for `name_or_path`: a local directory or file, else (a Hub id) the cache, else the
    Hub when `hub` and not offline. Raises ModelConfigError for a config that exists but cannot be used."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir():
            path = path / "config.json"
            if not path.exists():
                return Lookup(None, f"{name_or_path} has no config.json")
        elif path.suffix != ".json":
            return Lookup(None, f"{name_or_path} is neither a directory nor a .json file")
        return Lookup(FoundConfig(read_json(path), f"local file {path}", str(path)))
    if not looks_like_hub_id(name_or_path):
        return Lookup(None, f"{name_or_path} does not exist here")
    cached = from_cache(name_or_path)
    if cached is not None:
        return Lookup(FoundConfig(read_json(cached), f"Hugging Face cache {cached}", str(cached)))
    where = f"not in the Hugging Face cache ({hub_cache()})"
    if not hub:
        return Lookup(None, where)
    if offline():
        return Lookup(None, f"{where}, and offline (HF_HUB_OFFLINE): the Hub was not asked")
    downloaded, why = from_hub(name_or_path)
    if downloaded is None:
        return Lookup(None, f"{where}; {why}")
    return Lookup(FoundConfig(read_json(downloaded), f"Hugging Face Hub {name_or_path} (now cached: {downloaded})",
                              str(downloaded)))
