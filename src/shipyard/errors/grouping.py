"""Grouping events into issues: a stable fingerprint per event.

In order, the first that applies:

1. an explicit ``fingerprint`` from the SDK; ``{{ default }}`` in it stands for what the
   rules below would give (so ``["{{ default }}", "checkout"]`` splits a group further);
2. **stack trace**: the in-app frames of every exception in the chain (from the crashed
   thread when the exception has none), each frame as module (or file basename) plus
   normalised function name — never line or column numbers, so the same crash after an
   unrelated edit stays one issue — together with the exception types;
3. **exception**: type plus the value with its variable parts replaced
   (numbers, ids, emails, URLs, IPs, hex, dates, UUIDs);
4. **message**: the log message template (or the parameterised message);
5. otherwise the event's title.

The fingerprint is the first 32 hex characters of SHA-256 over the versioned components,
so it is stable across processes, restarts and dict ordering.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from shipyard.errors.normalize import obj

ALGORITHM = "v1"
_DEFAULT_MARKER = re.compile(r"^\{\{\s*default\s*\}\}$")

# --- parameterisation ---------------------------------------------------------------------------

_PARAMETERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+"), "<url>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"), "<date>"),
    (re.compile(r"\b\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\b"), "<time>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "<ip>"),
    (re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){3,7}[0-9a-fA-F]{1,4}\b"), "<ip>"),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b"), "<hex>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    # Numbers may carry a unit ("12.5s", "404ms") but not sit inside a word ("v2", "utf8").
    (re.compile(r"(?<![A-Za-z0-9.])\d+\.\d+(?![0-9.])"), "<float>"),
    (re.compile(r"(?<![A-Za-z0-9])\d+(?![0-9])"), "<int>"),
]


def parameterize(text: str) -> str:
    """The message with its variable parts replaced by placeholders (first two non-empty lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()][:2]
    result = "\n".join(lines)[:1000]
    for pattern, placeholder in _PARAMETERS:
        result = pattern.sub(placeholder, result)
    return result


# --- frames -------------------------------------------------------------------------------------

_FUNCTION_PREFIX = re.compile(r"^(?:async\s+|new\s+|Object\.|Module\.|Function\.|at\s+)+")
_JAVA_LAMBDA = re.compile(r"\$\$Lambda\$\d+/(?:0x)?[0-9a-fA-F]+")
_LAMBDA_SUFFIX = re.compile(r"lambda\$([\w$]+?)\$\d+")
_ANON_CLASS = re.compile(r"\$\d+")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_HASHY = re.compile(r"(?<![0-9a-zA-Z])(?=[0-9a-f]*\d)[0-9a-f]{8,}(?![0-9a-zA-Z])")
_UNKNOWN_FUNCTIONS = frozenset({"?", "<anonymous>", "anonymous", "<unknown>", "unknown", "[native code]"})
_IGNORED_FILENAMES = frozenset({"<anonymous>", "[native code]", "native", "<unknown>", "?", ""})


# The same frames recur in every event of a crash: normalising a name is pure, so results for
# names of ordinary length are cached (bounded in entries and in key size).
_CACHED_NAME_CHARS = 300


def normalize_function(name: Any) -> str:
    if not isinstance(name, str):
        return ""
    return _normalize_function_cached(name) if len(name) <= _CACHED_NAME_CHARS else _normalize_function(name)


def _normalize_function(name: str) -> str:
    name = name.strip()
    if name in _UNKNOWN_FUNCTIONS:
        return ""
    name = _FUNCTION_PREFIX.sub("", name)
    name = _JAVA_LAMBDA.sub("$$Lambda", name)
    name = _LAMBDA_SUFFIX.sub(r"lambda$\1", name)
    name = _ANON_CLASS.sub("$", name)
    name = _ADDRESS.sub("<addr>", name)
    return name[:200]


def normalize_filename(path: Any) -> str:
    """Basename, lower-cased, without query string and with build hashes masked."""
    if not isinstance(path, str):
        return ""
    return _normalize_filename_cached(path) if len(path) <= _CACHED_NAME_CHARS else _normalize_filename(path)


def _normalize_filename(path: str) -> str:
    path = path.split("?", 1)[0].split("#", 1)[0].strip()
    base = re.split(r"[/\\]", path)[-1].lower()
    if base in _IGNORED_FILENAMES:
        return ""
    return _HASHY.sub("<hash>", base)[:200]


def normalize_module(module: Any) -> str:
    if not isinstance(module, str):
        return ""
    return _normalize_module_cached(module) if len(module) <= _CACHED_NAME_CHARS else _normalize_module(module)


def _normalize_module(module: str) -> str:
    return _HASHY.sub("<hash>", module.strip())[:200]


_normalize_function_cached = lru_cache(maxsize=16384)(_normalize_function)
_normalize_filename_cached = lru_cache(maxsize=16384)(_normalize_filename)
_normalize_module_cached = lru_cache(maxsize=16384)(_normalize_module)


def frame_component(frame: dict[str, Any]) -> str | None:
    where = normalize_module(frame.get("module")) or normalize_filename(frame.get("filename") or frame.get("abs_path"))
    function = normalize_function(frame.get("function") or frame.get("raw_function"))
    if not where and not function:
        return None
    return f"{where}:{function}"


def in_app_frames(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Frames marked in-app; when an SDK marks none either way, every frame counts as the app's."""
    if any(isinstance(f.get("in_app"), bool) for f in frames):
        return [f for f in frames if f.get("in_app") is True]
    return frames


def frames_components(frames: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for frame in in_app_frames(frames):
        component = frame_component(frame)
        if component is not None and (not out or out[-1] != component):  # collapse recursion
            out.append(component)
    return out


# --- the strategies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Grouping:
    fingerprint: str
    method: str  # fingerprint | stacktrace | exception | message | fallback
    components: list[Any]

    def describe(self) -> dict[str, Any]:
        return {"algorithm": ALGORITHM, "method": self.method, "components": self.components}


def _exceptions(event: dict[str, Any]) -> list[dict[str, Any]]:
    exc = event.get("exception")
    values = exc.get("values") if isinstance(exc, dict) else exc
    return [v for v in values or [] if isinstance(v, dict)]


def _frames(container: dict[str, Any]) -> list[dict[str, Any]]:
    stacktrace = container.get("stacktrace")
    if not isinstance(stacktrace, dict):
        return []
    return [f for f in stacktrace.get("frames") or [] if isinstance(f, dict)]


def _crashed_thread_frames(event: dict[str, Any]) -> list[dict[str, Any]]:
    threads = event.get("threads")
    values = threads.get("values") if isinstance(threads, dict) else threads
    for thread in values or []:
        if isinstance(thread, dict) and thread.get("crashed"):
            return _frames(thread)
    return []


def _exception_type(exc: dict[str, Any]) -> str | None:
    mechanism = obj(exc.get("mechanism"))
    if mechanism.get("synthetic"):
        return None  # a synthetic type (e.g. a signal name) says nothing about the bug
    kind = exc.get("type")
    return str(kind)[:200] if kind else None


def _message_text(event: dict[str, Any]) -> str | None:
    entry = event.get("logentry") or event.get("message")
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        # The template groups "user 1 failed" with "user 2 failed" even unparameterised.
        template = entry.get("message")
        if isinstance(template, str) and template and entry.get("params"):
            return template
        for key in ("formatted", "message"):
            if isinstance(entry.get(key), str) and entry[key]:
                return str(entry[key])
    return None


def default_grouping(event: dict[str, Any]) -> tuple[str, list[Any]]:
    exceptions = _exceptions(event)
    if exceptions:
        chain = []
        has_frames = False
        for index, exc in enumerate(exceptions):
            frames = _frames(exc)
            if not frames and index == len(exceptions) - 1:
                frames = _crashed_thread_frames(event)
            components = frames_components(frames)
            has_frames = has_frames or bool(components)
            chain.append({"type": _exception_type(exc), "frames": components})
        if has_frames:
            return "stacktrace", chain
        return "exception", [
            {"type": _exception_type(exc), "value": parameterize(str(exc.get("value") or ""))} for exc in exceptions
        ]
    thread_frames = frames_components(_crashed_thread_frames(event))
    if thread_frames:
        return "stacktrace", [{"type": None, "frames": thread_frames}]
    text = _message_text(event)
    if text:
        return "message", [parameterize(text)]
    return "fallback", [str(event.get("transaction") or event.get("title") or "<unlabeled event>")[:200]]


def group(event: dict[str, Any]) -> Grouping:
    method, components = default_grouping(event)
    custom = event.get("fingerprint")
    only_default = (
        isinstance(custom, list)
        and len(custom) == 1
        and isinstance(custom[0], str)
        and bool(_DEFAULT_MARKER.match(custom[0].strip()))
    )
    if (
        isinstance(custom, list)
        and custom
        and not only_default
        and all(isinstance(v, str | int | float) for v in custom)
    ):
        values: list[Any] = []
        uses_default = False
        for value in custom:
            if isinstance(value, str) and _DEFAULT_MARKER.match(value.strip()):
                values.append({"default": components})
                uses_default = True
            else:
                values.append(str(value)[:200])
        method = "fingerprint+default" if uses_default else "fingerprint"
        components = values
    digest = hashlib.sha256(orjson.dumps([ALGORITHM, method.split("+")[0], components])).hexdigest()[:32]
    return Grouping(digest, method, components)
