#!/usr/bin/env python3
"""Offline checks of Rucat's Helm chart: lint it, render it, validate what it renders.

Run it with the Python of the k8s-tools virtualenv that scripts/setup.sh installs
(${RUCAT_CACHE_DIR:-~/.cache/rucat}/k8s-tools); no cluster, no helm binary, no network:

  PY=~/.cache/rucat/k8s-tools/bin/python
  $PY scripts/k8s_check.py lint deploy/helm/rucat --set database.url=postgres://u@db/rucat
  $PY scripts/k8s_check.py template deploy/helm/rucat OUT_DIR --set database.url=... \\
      --set auth.existingSecret=rucat-tokens --set proxy.publicUrl=sc://spark.example.com:443 \\
      --set proxy.tls.existingSecret=spark-tls [--json]
  $PY scripts/k8s_check.py check deploy/helm/rucat -f my-values.yaml   # all three

The chart renders only with a store (database.*), a credential source (auth.existingSecret,
auth.tokens or auth.jwt.issuer) and, with the proxy enabled, proxy.publicUrl and TLS
(proxy.tls.existingSecret, or proxy.allowPlaintext); `lint` reports their absence as a warning
only, as helm does.

Two Helm v4 Go libraries do the work (the helm binary is not in either package):
  - helm-sdkpy (Helm 4.3): `helm_sdkpy.Lint(Configuration()).run(chart_dir)` is `helm lint`
    with the chart's own values.yaml only: no values argument, no --strict, and its messages
    lose their text (Go errors serialize as {}); it has no template rendering at all (Install
    has no dry-run option and needs a cluster). Values are therefore given to it by linting a
    copy of the chart whose values.yaml holds the merged values.
  - helm-python-sdk (Helm 4.2): `helm_python.lint(dir, values, strict=...)` is `helm lint
    --strict` with values and readable messages, and `helm_python.Chart.load(dir).render(values,
    name=, namespace=, is_install=True)` is `helm template`; `helm_python.parse_set_string` is
    Helm's own --set parser.
Validation uses kubernetes-validate (the Kubernetes OpenAPI schemas, --strict rejects unknown
fields).

Exit status: 0 when everything passed, 1 when a check found a problem, 2 when the chart did not
render (the message, e.g. a `required` value, is on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}

# Versions the chart is validated against by `check`: the oldest the chart supports (its
# kubeVersion) and the newest kubernetes-validate knows.
DEFAULT_KUBERNETES_VERSIONS = ["1.25.0", "latest"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Values: --values files then --set expressions, merged as Helm does.


def merge(base: Any, override: Any) -> Any:
    """Helm's coalescing of user values: maps merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def apply_set(base: Any, parsed: Any) -> Any:
    """Parsed --set expressions written into the values files' values, as Helm's
    strvals.ParseInto does: maps merge key by key, and `list[i]...` sets element i only, keeping
    the others (the parser fills the indices it skipped with None). One difference: a whole list
    set over a longer list of a values file keeps that list's extra elements."""
    if isinstance(base, dict) and isinstance(parsed, dict):
        merged = dict(base)
        for key, value in parsed.items():
            merged[key] = apply_set(base.get(key), value)
        return merged
    if isinstance(base, list) and isinstance(parsed, list):
        merged = list(base) + [None] * max(0, len(parsed) - len(base))
        for index, value in enumerate(parsed):
            if value is not None or index >= len(base):
                merged[index] = apply_set(base[index] if index < len(base) else None, value)
        return merged
    return copy.deepcopy(parsed)


def user_values(values_files: list[str], sets: list[str]) -> dict[str, Any]:
    import helm_python

    values: dict[str, Any] = {}
    for path in values_files:
        values = merge(values, helm_python.values_from_yaml(Path(path).read_text()) or {})
    # All --set expressions in one parse, as Helm applies them one after the other into the
    # same map: `--set a[0].x=1 --set a[1].x=2` makes a two-element list.
    expression = ",".join(s for s in sets if s)
    if expression:
        values = apply_set(values, helm_python.parse_set_string(expression))
    return values


# ---------------------------------------------------------------------------------------------
# lint


def lint_helm_python(chart: Path, values: dict[str, Any], strict: bool) -> list[str]:
    import helm_python

    report = helm_python.lint(str(chart), values or None, strict=strict)
    problems = []
    for message in report.get("messages") or []:
        severity = SEVERITY.get(message.get("severity"), str(message.get("severity")))
        line = f"[{severity}] {message.get('path')}: {message.get('error')}"
        say(f"  helm-python-sdk lint {line}")
        if message.get("severity") == 3 or (strict and message.get("severity") == 2):
            problems.append(f"helm-python-sdk lint {line}")
    for error in report.get("errors") or []:
        text = f"helm-python-sdk lint error: {error}"
        if not any(str(error) in problem for problem in problems):
            problems.append(text)
    return problems


def lint_helm_sdkpy(chart: Path, values: dict[str, Any], strict: bool) -> list[str]:
    import helm_sdkpy

    with tempfile.TemporaryDirectory(prefix="rucat-lint-") as scratch:
        copy_dir = Path(scratch) / chart.name
        shutil.copytree(chart, copy_dir)
        if values:
            defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
            # As JSON (which YAML reads as is): PyYAML writes strings such as "y" or "n" bare,
            # and Helm's YAML 1.1 parser would read them back as booleans.
            (copy_dir / "values.yaml").write_text(json.dumps(merge(defaults, values), indent=2))
        config = helm_sdkpy.Configuration(namespace="default")
        report = asyncio.run(helm_sdkpy.Lint(config).run(str(copy_dir)))
    problems = []
    for message in report.get("Messages") or []:
        severity_number = message.get("Severity")
        severity = SEVERITY.get(severity_number, str(severity_number))
        # helm-sdkpy serializes the Go error as {}: only the severity and the path survive.
        line = f"[{severity}] {message.get('Path')}"
        say(f"  helm-sdkpy lint {line}")
        if severity_number == 3 or (strict and severity_number == 2):
            problems.append(f"helm-sdkpy lint {line} (helm-python-sdk's lint above has the text)")
    if report.get("Errors") and not problems:
        problems.append(f"helm-sdkpy lint reported {len(report['Errors'])} error(s)")
    return problems


def lint(chart: Path, values: dict[str, Any], strict: bool) -> list[str]:
    say(f"lint {chart}{' (strict)' if strict else ''}")
    problems = lint_helm_python(chart, values, strict)
    problems += lint_helm_sdkpy(chart, values, strict)
    return problems


# ---------------------------------------------------------------------------------------------
# template


class RenderError(Exception):
    pass


def render(chart: Path, values: dict[str, Any], release: str, namespace: str) -> tuple[list[dict], dict[str, str]]:
    """The chart's objects (in template order) and its notes, as `helm template` makes them."""
    import helm_python

    loaded = helm_python.Chart.load(str(chart))
    try:
        manifests = loaded.render(values or None, name=release, namespace=namespace, is_install=True)
    except helm_python.HelmError as error:
        raise RenderError(str(error)) from error
    finally:
        loaded.close()
    objects: list[dict] = []
    notes: dict[str, str] = {}
    for template in sorted(manifests):
        text = manifests[template]
        if template.endswith("NOTES.txt"):
            notes[template] = text
            continue
        for document in yaml.safe_load_all(text):
            if document is None:
                continue
            if not isinstance(document, dict) or "kind" not in document:
                raise RenderError(f"{template} rendered something that is not a Kubernetes object: {document!r}")
            document.setdefault("metadata", {})
            objects.append(document)
    return objects, notes


def object_file_name(index: int, obj: dict) -> str:
    kind = obj.get("kind", "Object").lower()
    meta = obj.get("metadata") or {}
    name = re.sub(r"[^a-z0-9.-]", "_", f"{meta.get('namespace', '_')}-{meta.get('name', 'unnamed')}".lower())
    return f"{index:03d}-{kind}-{name}.yaml"


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (rucat.toml in the ConfigMap) as literal blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not any(c in value for c in "\t\r") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def write_objects(objects: list[dict], notes: dict[str, str], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.yaml"):
        stale.unlink()
    paths = []
    for index, obj in enumerate(objects):
        path = out_dir / object_file_name(index, obj)
        path.write_text(yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False))
        paths.append(path)
    (out_dir / "NOTES.txt").write_text("".join(notes.values()))
    return paths


# ---------------------------------------------------------------------------------------------
# validate


def validate(paths: list[Path], kubernetes_versions: list[str]) -> list[str]:
    tool = Path(sys.executable).with_name("kubernetes-validate")
    if not tool.exists():
        return [f"kubernetes-validate is not installed beside {sys.executable} (run scripts/setup.sh)"]
    problems = []
    for version in kubernetes_versions:
        command = [str(tool), "--strict", "--quiet"]
        if version != "latest":
            command += ["--kubernetes-version", version]
        command += [str(path) for path in paths]
        result = subprocess.run(command, capture_output=True, text=True)
        label = f"kubernetes-validate --strict (Kubernetes {version})"
        output = (result.stdout + result.stderr).strip()
        if result.returncode != 0:
            problems.append(f"{label} failed:\n{output}")
        else:
            say(f"  {label}: {len(paths)} object(s) valid")
    return problems


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def values_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("chart", type=Path, help="the chart directory, e.g. deploy/helm/rucat")
        sub.add_argument("-f", "--values", action="append", default=[], help="a values file (repeatable)")
        sub.add_argument("--set", action="append", default=[], help="a Helm --set expression (repeatable)")

    def render_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--release", default="rucat", help="release name (default rucat)")
        sub.add_argument("--namespace", default="rucat", help="release namespace (default rucat)")

    lint_cmd = commands.add_parser("lint", help="helm lint (both Helm libraries)")
    values_options(lint_cmd)
    lint_cmd.add_argument("--no-strict", action="store_true", help="do not treat warnings as errors")

    template_cmd = commands.add_parser("template", help="helm template, one file per object")
    values_options(template_cmd)
    template_cmd.add_argument("out_dir", type=Path, help="directory for the rendered objects")
    render_options(template_cmd)
    template_cmd.add_argument("--json", action="store_true", help="also print the objects as a JSON array on stdout")

    check_cmd = commands.add_parser("check", help="lint, template and kubernetes-validate --strict")
    values_options(check_cmd)
    render_options(check_cmd)
    check_cmd.add_argument("--out-dir", type=Path, help="keep the rendered objects here")
    check_cmd.add_argument(
        "--kubernetes-version",
        action="append",
        help=f"Kubernetes version(s) to validate against (default {' and '.join(DEFAULT_KUBERNETES_VERSIONS)})",
    )

    args = parser.parse_args()
    try:
        values = user_values(args.values, args.set)
    except Exception as error:  # a malformed --set or values file
        say(f"bad values: {error}")
        return 2

    problems: list[str] = []
    if args.command in ("lint", "check"):
        problems += lint(args.chart, values, strict=not getattr(args, "no_strict", False))

    if args.command in ("template", "check"):
        try:
            objects, notes = render(args.chart, values, args.release, args.namespace)
        except RenderError as error:
            say(f"the chart did not render: {error}")
            return 2
        out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="rucat-template-"))
        paths = write_objects(objects, notes, out_dir)
        kinds: dict[str, int] = {}
        for obj in objects:
            kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        say(f"rendered {len(objects)} object(s) into {out_dir}: {summary}")
        if args.command == "template" and args.json:
            json.dump(objects, sys.stdout)
            sys.stdout.write("\n")
        if args.command == "check":
            problems += validate(paths, args.kubernetes_version or DEFAULT_KUBERNETES_VERSIONS)
            if not args.out_dir:
                shutil.rmtree(out_dir, ignore_errors=True)

    if problems:
        say(f"{len(problems)} problem(s):")
        for problem in problems:
            say(f"  - {problem}")
        return 1
    say("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
