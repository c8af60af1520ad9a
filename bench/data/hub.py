"""The Hugging Face hub source: fail in about a second when the hub cannot answer, honour offline mode set after
``datasets`` was imported, pass the token, cache dir and process count to ``load_dataset``, and turn every loading
failure into one line naming the fix."""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.data.bundle import DataBundle
from bench.data.sources import LOCAL_HINT, bundle_from_splits
from bench.errors import UsageError, one_line

DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT


def _hf_datasets_cache() -> Path:
    """HF datasets cache as the environment says now (datasets.config froze it at import)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")).expanduser() / "datasets"


def hub_cached(name: str) -> bool:
    """Whether ``datasets`` has a prepared copy of ``name`` it could load in offline mode."""
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = _hf_datasets_cache() / "___".join(parts)
    return any(os.path.isdir(p) for p in glob.glob(os.path.join(glob.escape(str(root)), "*", "*", "*")))


def probe_hub(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """HEAD the hub endpoint; None when it answers, else why not. Never blocks past ``timeout``.

    Runs in a daemon thread because name resolution ignores socket timeouts and can hang.
    """
    result: dict[str, str | None] = {}

    def run() -> None:
        try:
            request = urllib.request.Request(endpoint.rstrip("/") + "/", method="HEAD")
            urllib.request.urlopen(request, timeout=timeout).close()
            result["error"] = None
        except urllib.error.HTTPError:
            result["error"] = None  # the server answered; that is all we need to know
        except Exception as e:  # any failure to get an answer means unreachable
            result["error"] = one_line(getattr(e, "reason", None) or e)

    thread = threading.Thread(target=run, name="tokenbench-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "error" not in result:
        return f"no answer within {timeout:g} s"
    return result["error"]


@contextlib.contextmanager
def _offline_mode() -> Iterator[None]:
    """Make datasets/huggingface_hub honour an offline flag set after they were imported."""
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def load_hub(cfg: Mapping[str, Any]) -> DataBundle:
    import datasets

    name = cfg["name"]
    offline = hub_offline()
    if offline and not hub_cached(name):
        raise UsageError(
            f"data: offline mode (HF_HUB_OFFLINE=1) and hub dataset {name!r} is not in the local "
            f"Hugging Face cache {str(_hf_datasets_cache())!r}; {LOCAL_HINT}"
        )
    if not offline:
        endpoint = hub_endpoint()
        reason = probe_hub(endpoint)
        if reason is not None:
            raise UsageError(
                f"data: the Hugging Face hub at {endpoint} is unreachable ({reason}), so {name!r} "
                f"cannot be loaded; {LOCAL_HINT}, or set HF_HUB_OFFLINE=1 to use a cached copy"
            )
    guard = _offline_mode() if offline else contextlib.nullcontext()
    # the token from the environment (HF_TOKEN, as huggingface_hub reads it), else huggingface_hub's own lookup
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
    cache_dir = str(Path(cfg["cache_dir"]).expanduser()) if cfg.get("cache_dir") else None
    splits = {}
    try:
        with guard:
            for split in dict.fromkeys((cfg["train_split"], cfg["val_split"])):
                splits[split] = datasets.load_dataset(
                    name,
                    cfg.get("subset"),
                    split=split,
                    revision=cfg.get("revision"),
                    cache_dir=cache_dir,
                    num_proc=cfg.get("num_proc"),
                    token=token,
                )
    except (OSError, ValueError, RuntimeError) as e:  # FileNotFoundError, ConnectionError and HTTPError are OSErrors
        raise UsageError(f"data: cannot load hub dataset {name!r}: {hub_error_fix(e, name, cfg)}") from None
    return bundle_from_splits(splits, cfg, f"hub dataset {name!r}")


def hub_error_fix(e: BaseException, name: str, cfg: Mapping[str, Any]) -> str:
    """``datasets``' error (it re-raises the hub's with its cause dropped, so the text is what there is to go
    by) as one line that names the fix."""
    text = one_line(e)
    page = f"{hub_endpoint().rstrip('/')}/datasets/{name}"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, RuntimeError) and "scripts are no longer supported" in text:
        return (
            f"{text}: datasets >= 4 cannot run loading scripts; use a repository with data files "
            f"(imagenet-1k: name: ILSVRC/imagenet-1k, parquet), its parquet conversion "
            f"(revision: refs/convert/parquet), or a local copy ({LOCAL_HINT})"
        )
    if "gated dataset" in text and "authenticated" in text:
        return (
            f"{text} Set HF_TOKEN to a token of an account that accepted the terms at {page} (or run `hf auth login`)"
        )
    if "gated dataset" in text or "Cannot access gated repo" in text:
        return f"{text} Your token's account has no access yet: accept the terms at {page}"
    if status == 401 or "Invalid credentials" in text or "401" in text.split("For more information")[0]:
        return "the hub refused the token (401 Unauthorized); renew HF_TOKEN (or `hf auth login`)"
    if "Revision" in text and "doesn't exist" in text:
        return f"{text} Check data.revision (a branch, tag or commit of {page})"
    if "doesn't exist on the Hub" in text:
        return f"{text} Check data.name; a private dataset also needs HF_TOKEN"
    if text.startswith("Unknown split"):
        return f"{text} Set data.train_split / data.val_split to one of those"
    if "BuilderConfig" in text and "not found" in text:
        return f"{text} Set data.subset to one of those"
    if "OfflineModeIsEnabled" in text:
        return f"offline mode (HF_HUB_OFFLINE=1) and {name!r} is not cached; unset HF_HUB_OFFLINE or {LOCAL_HINT}"
    if isinstance(e, ConnectionError) or "Internet connection" in text:
        return f"{text}; the hub is unreachable from here: {LOCAL_HINT}, or set HF_HUB_OFFLINE=1 to use a cached copy"
    return text
