"""The Snakefile's config: checked against ``bench/schemas/workflow.schema.json`` before anything runs, and the
runtime settings in it turned into the ``bench train`` / ``bench evaluate`` options of every compute step.

Kept out of the Snakefile so it is testable and the Snakefile stays a list of file transforms.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from collections.abc import Mapping
from importlib import resources
from typing import Any

from bench.errors import UsageError, clip
from bench.registry import did_you_mean
from bench.runtime import PROFILE_KEYS


def workflow_schema() -> dict[str, Any]:
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


def _shown(value: Any, limit: int = 80) -> str:
    """A value quoted in a message: a bounded repr (a few items of a list, a few levels; an alias-expanded
    structure is never walked whole) cut to one short line."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 3, 4, 4, limit, limit
    return clip(r.repr(value), limit)


def unsafe_char(value: str) -> str | None:
    """What in ``value`` Snakemake's quoting could change or the shell expand, named; None when nothing is.

    Snakemake spawns each ``run:`` job as ``sh -c "... --config key=<repr(value)>"``: repr writes a value holding
    a single quote in double quotes (in which sh expands ``$(...)`` and backticks), doubles a backslash and
    escapes a newline or control character. Any other character sits in single quotes, which sh leaves alone."""
    for c in value:
        if c == "'":
            return "a single quote"
        if c == "\\":
            return "a backslash"
        if c == "\n":
            return "a newline"
        if not c.isprintable():
            return f"the control character U+{ord(c):04X}"
    return None


def check_results_path(path: Any, what: str = "results path") -> str:
    """One line naming ``path`` unless results can be written there: not empty, no character a shell or
    Snakemake's quoting changes, a folder (or a missing one under a folder) that is no file, no symlink loop,
    and writable (tried: a probe folder made and removed, so permissions, ACLs and read-only mounts all count)."""
    if path is None or not str(path).strip():
        raise UsageError(f"{what} is empty: give the folder results go to (e.g. results)")
    path = str(path)
    bad = unsafe_char(path)
    if bad:
        raise UsageError(f"{what} {_shown(path, 120)} holds {bad}; rename the folder")
    probe = path
    while True:
        try:
            st = os.stat(probe)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UsageError(f"{what} {path} runs into a symlink loop") from None
            if e.errno == errno.ENOTDIR:
                raise UsageError(f"{what} {path}: a part of it is a file, not a folder") from None
            if e.errno != errno.ENOENT:
                raise UsageError(f"{what} {path}: {e.strerror}") from None
            parent = os.path.dirname(os.path.abspath(probe))
            if parent == os.path.abspath(probe):
                raise UsageError(f"{what} {path}: {e.strerror}") from None
            probe = parent
            continue
        if not stat.S_ISDIR(st.st_mode):
            where = "" if probe == path else f": {probe}"
            raise UsageError(f"{what} {path}{where} is a file, not a folder")
        break
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tokenbench-probe-", dir=probe))
    except OSError as e:
        raise UsageError(f"{what} {path} is read-only: cannot write in {probe} ({e.strerror})") from None
    return path


def check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow config with command-line words read as values; one line naming the key for the first thing
    wrong in it. Every value is typed by the schema (an integer is an int, never 4.0 or true; a number is finite;
    names from their lists), and no string holds what Snakemake's quoting for its jobs could change."""
    import jsonschema

    config = {k: _coerce(k, v) for k, v in config.items()}
    schema = workflow_schema()
    known = sorted(schema["properties"])
    for key in config:
        if key not in schema["properties"]:
            raise UsageError(
                f"unknown config key {_shown(key, 60)}{did_you_mean(str(key), known)} "
                f"(this workflow takes: {', '.join(known)})"
            )
    for key, value in config.items():
        allowed = schema["properties"][key]
        shown = _shown(value, 80)
        if isinstance(value, str) and unsafe_char(value):
            # refused here, in the first snakemake process, before any job process is spawned through sh
            raise UsageError(
                f"config {key}={shown}: holds {unsafe_char(value)}, which cannot reach Snakemake's job processes "
                "unchanged; rename it (spaces, parentheses, $ and double quotes are fine)"
            )
        if key in ("suite", "results") and (value is None or not str(value).strip()):
            raise UsageError(f"config {key} is empty: give a {'suite name or file' if key == 'suite' else 'folder'}")
        if isinstance(value, (list, dict)) or (
            isinstance(value, float) and (not math.isfinite(value) or _integer_only(allowed))
        ):  # every key is a scalar: a list is never walked (jsonschema would repr an alias bomb whole)
            raise UsageError(f"config {key}={shown}: not allowed ({_describe(allowed)})")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dict(config)), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.path) or "(config)"
        allowed = schema["properties"].get(key, {})
        raise UsageError(f"config {key}={_shown(e.instance, 80)}: not allowed ({_describe(allowed) or e.message})")
    if "results" in config:
        check_results_path(config["results"], "config results")
    return config


def _integer_only(prop: Mapping[str, Any]) -> bool:
    """Whether the key takes integers and no other number (jsonschema counts 4.0 as an integer; the CLI does not)."""
    types = {b.get("type") for b in prop.get("anyOf", [prop])}
    return "integer" in types and "number" not in types


def _describe(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "choose " + ", ".join(map(str, prop["enum"]))
    parts = []
    for branch in prop.get("anyOf", [prop]):
        if "const" in branch:
            parts.append(repr(branch["const"]))
        elif "enum" in branch:
            parts.append(", ".join(map(str, branch["enum"])))
        elif branch.get("type") in ("integer", "number"):
            kind = "an integer" if branch["type"] == "integer" else "a finite number"
            top = f" and <= {branch['maximum']}" if "maximum" in branch else ""
            parts.append(f"{kind} >= {branch.get('minimum', 0)}{top}")
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


#: the rules a profile's set-resources may name, and the resources the compute rules declare (the Snakefile's
#: COMPUTE_RESOURCES, which become bench.launch's options): (type, least value) or str
COMPUTE_RULES = ("pretrain", "finetune", "evaluate", "timing")
RULES = (*COMPUTE_RULES, "index", "collect", "report", "all")
RESOURCES: dict[str, tuple[type, int]] = {
    "gpus": (int, 0),
    "tasks": (int, 0),
    "cpus_per_task": (int, 1),
    "mem_mb": (int, 0),
    "runtime": (int, 1),
    "slurm_partition": (str, 0),
    "slurm_account": (str, 0),
    "slurm_qos": (str, 0),
    "constraint": (str, 0),
    "slurm_extra": (str, 0),
}
#: Snakemake's own resources, which a profile may also set for any rule (it checks them itself)
SNAKEMAKE_RESOURCES = ("mem", "mem_mib", "disk", "disk_mb", "disk_mib", "tmpdir", "_cores", "_nodes")
PROFILE_SETTINGS_TYPES = {"set-resources": Mapping, "set-threads": Mapping, "configfile": (str, list)}


def check_resources(resources: Any, where: str, values: bool = True) -> dict[str, Any]:
    """set-resources of a profile (or the command line): known rules, known resources, and (``values``) integers
    that are integers and strings without control characters (they reach the sbatch script line by line)."""
    if not isinstance(resources, Mapping):
        raise UsageError(f"{where}: must map rule names to resources, got {_shown(resources, 60)}")
    for rule, res in resources.items():
        if rule not in RULES:
            raise UsageError(
                f"{where}: no rule {_shown(rule, 60)}{did_you_mean(str(rule), list(RULES))}"
                f" (rules: {', '.join(COMPUTE_RULES)})"
            )
        if not isinstance(res, Mapping):
            raise UsageError(f"{where} {rule}: must be a mapping of resources, got {_shown(res, 60)}")
        for name, value in res.items():
            if name in SNAKEMAKE_RESOURCES:
                continue
            if name not in RESOURCES:
                raise UsageError(
                    f"{where} {rule}: unknown resource {_shown(name, 60)}"
                    f"{did_you_mean(str(name), list(RESOURCES))} (takes: {', '.join(RESOURCES)})"
                )
            kind, least = RESOURCES[name]
            if not values:
                continue
            shown = _shown(value, 60)
            if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise UsageError(f"{where} {rule}.{name}={shown}: not allowed (an integer >= {least})")
            if kind is str and (not isinstance(value, str) or (value and unsafe_char(value))):
                why = unsafe_char(value) if isinstance(value, str) else "not a string"
                raise UsageError(f"{where} {rule}.{name}={shown}: not allowed ({why})")
    return dict(resources)


def _yaml_mapping(path: Any, what: str) -> dict[str, Any]:
    """A profile's YAML file as a mapping, read as a suite is (bench.suite_file: UTF-8, unique string keys, bounded
    aliases and nesting, finite numbers), or one line naming the file."""
    from pathlib import Path

    from bench.suite_file import read_yaml

    try:
        data = read_yaml(Path(path))
    except UsageError as e:
        raise UsageError(f"{what} {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{what} {path}: must be a mapping of settings, got {type(data).__name__}")
    return data


def read_profile(profile: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(set-resources, workflow config, where) of a Snakemake profile given as ``--profile`` takes it: a folder
    holding config.yaml (``slurm``), else ``profiles/<name>``; the config is the profile's ``configfile``.

    Checked like a suite, one line naming the file: YAML, a mapping, set-resources of known rules and resources
    with values of their types, and the config file against the workflow schema. Snakemake reads a profile
    before any of our code runs, so ``bench validate --profile X`` is where a broken profile is named."""
    from pathlib import Path

    for folder in (Path(profile), Path("profiles") / profile):
        if (folder / "config.yaml").is_file():
            break
    else:
        raise UsageError(f"profile {profile!r} not found (a folder with config.yaml, e.g. slurm or profiles/default)")
    where = str(folder / "config.yaml")
    settings = _yaml_mapping(folder / "config.yaml", "profile")
    for key, kind in PROFILE_SETTINGS_TYPES.items():
        if settings.get(key) is not None and not isinstance(settings[key], kind):
            raise UsageError(f"profile {where}: {key} must be a {'mapping' if key.startswith('set') else 'file name'}")
    resources = check_resources(settings.get("set-resources") or {}, f"profile {where}: set-resources")
    config: dict[str, Any] = {}
    files = settings.get("configfile") or settings.get("configfiles") or []
    for name in [files] if isinstance(files, str) else files:
        part = _yaml_mapping(name, f"profile {where}: configfile")
        try:
            config.update(check_config(part))
        except UsageError as e:
            raise UsageError(f"profile configfile {name}: {e}") from None
    config = check_config(config)
    return resources, config, where + (f" + {files}" if files else "")


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
