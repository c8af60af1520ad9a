"""The Snakefile's config: checked against ``bench/schemas/workflow.schema.json`` before anything runs, and the
runtime settings in it turned into the ``bench train`` / ``bench evaluate`` options of every compute step.

Kept out of the Snakefile so it is testable and the Snakefile stays a list of file transforms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from bench.errors import UsageError
from bench.registry import did_you_mean
from bench.runtime import PROFILE_KEYS


def _schema() -> dict[str, Any]:
    return json.loads(resources.files("bench").joinpath("schemas/workflow.schema.json").read_text())


_WORDS = {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False, "null": None, "none": None}


def _coerce(key: str, value: Any) -> Any:
    """``snakemake --config channels_last=true`` gives the string 'true': read it as YAML would."""
    if (
        isinstance(value, str)
        and value.lower() in _WORDS
        and key in ("channels_last", "compile", "device_batch", "timing_precision", "timing_threads")
    ):
        return _WORDS[value.lower()]
    return value


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow config with command-line words read as values; one line naming the key for the first thing
    wrong in it."""
    import jsonschema

    config = {k: _coerce(k, v) for k, v in config.items()}
    schema = _schema()
    known = sorted(schema["properties"])
    for key in config:
        if key not in schema["properties"]:
            raise UsageError(
                f"unknown config key {key!r}{did_you_mean(str(key), known)} (this workflow takes: {', '.join(known)})"
            )
    for key in ("suite", "results"):
        if "'" in str(config.get(key, "")):
            # Snakemake spawns each run: job as `sh -c "... --config key=<repr(value)>"`; repr of a value holding
            # a single quote uses double quotes, in which the shell expands $(...) and backticks
            raise UsageError(
                f"config {key}={config[key]!r}: a single quote in this path cannot reach Snakemake's "
                f"jobs safely; rename the folder (spaces, parentheses, $ and double quotes are fine)"
            )
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dict(config)), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.path) or "(config)"
        allowed = schema["properties"].get(key, {})
        raise UsageError(f"config {key}={e.instance!r}: not allowed ({_describe(allowed) or e.message})")
    return config


def _describe(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "choose " + ", ".join(map(str, prop["enum"]))
    parts = []
    for branch in prop.get("anyOf", [prop]):
        if "const" in branch:
            parts.append(repr(branch["const"]))
        elif branch.get("type") in ("integer", "number"):
            parts.append(f"{'an integer' if branch['type'] == 'integer' else 'a number'} >= {branch.get('minimum', 0)}")
        elif branch.get("type"):
            parts.append(str(branch["type"]))
    return "expected " + " or ".join(parts) if parts else ""


def runtime_args(config: Mapping[str, Any]) -> list[str]:
    """The runtime settings present in ``config`` as bench CLI options (absent ones keep the CLI's defaults)."""
    args: list[str] = []
    for key, option in PROFILE_KEYS.items():
        if key not in config or config[key] is None:
            continue
        value = config[key]
        if key == "channels_last":
            args.append("--channels-last" if value else "--no-channels-last")
        elif key == "compile":
            args += (
                [option, {True: "on", False: "off"}.get(value, value)]
                if isinstance(value, bool)
                else [option, str(value)]
            )
        else:
            args += [option, str(value)]
    return args


def read_profile(profile: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(set-resources, workflow config, where) of a Snakemake profile given as ``--profile`` takes it: a folder
    holding config.yaml (``slurm``), else ``profiles/<name>``; the config is the profile's ``configfile``."""
    from pathlib import Path

    import yaml

    for folder in (Path(profile), Path("profiles") / profile):
        if (folder / "config.yaml").is_file():
            break
    else:
        raise UsageError(f"profile {profile!r} not found (a folder with config.yaml, e.g. slurm or profiles/default)")
    settings = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    config: dict[str, Any] = {}
    files = settings.get("configfile") or settings.get("configfiles") or []
    for name in [files] if isinstance(files, str) else files:
        config.update(yaml.safe_load(Path(name).read_text()) or {})
    config = check_config(config)
    where = str(folder / "config.yaml") + (f" + {files}" if files else "")
    return settings.get("set-resources") or {}, config, where


def batch_plan_line(global_batch: int, gpus: int, device_batch: int | None) -> str:
    """How a global batch is run: devices x micro-batches x micro-batch size, e.g. for ``bench validate``."""
    from bench.runtime import micro_batches

    devices = max(1, gpus)
    if global_batch % devices:
        return f"batch {global_batch} does not divide over {devices} devices"
    local = global_batch // devices
    n = micro_batches(local, device_batch)
    kind = "GPU" if gpus else "process"
    how = f"{n} accumulated micro-batches of {local // n}" if n > 1 else f"one batch of {local}"
    cap = f" (device_batch {device_batch})" if device_batch else ""
    return f"batch {global_batch} = {devices} {kind}{'s' if devices > 1 else ''} x {how}{cap}"
