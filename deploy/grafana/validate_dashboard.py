"""Validate a Grafana dashboard (argv[1], JSON) against the schemas in
schemas/, generated from PyPI grafana-foundation-sdk (schemas/generate.py):
the dashboard kind, and each panel's options and fieldConfig.defaults.custom
against its panel plugin's. Exit 1 with every error, else print a summary.
Run by agent/tests/deploy_grafana.rs with the venv of `cargo xtask setup --for test`.

Allowance: `__inputs` and `__requires` are the export envelope Grafana adds
for "Import dashboard" (data-source inputs), not part of the dashboard kind;
they are checked for shape here and removed before the kind is validated."""
import json
import pathlib
import sys

import jsonschema

SCHEMAS = pathlib.Path(__file__).parent / "schemas"
ENVELOPE = {"__inputs", "__requires"}


def validator(name):
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(name, instance, where):
    return [f"{where}/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(instance)]


dashboard = json.loads(pathlib.Path(sys.argv[1]).read_text())
found = []
for key in ENVELOPE & dashboard.keys():
    if not isinstance(dashboard[key], list) or not all(isinstance(i, dict) for i in dashboard[key]):
        found.append(f"{key}: must be a list of objects")
kind = {k: v for k, v in dashboard.items() if k not in ENVELOPE}
found += errors("dashboard.schema.json", kind, "dashboard")
checked = 0
for index, panel in enumerate(dashboard.get("panels", [])):
    kind_name = panel.get("type")
    where = f"panels/{index} ({panel.get('title')!r}, {kind_name})"
    options = SCHEMAS / f"{kind_name}.options.schema.json"
    if kind_name == "row":
        continue
    if not options.exists():
        found.append(f"{where}: no schema for panel type {kind_name!r} (add it to schemas/generate.py)")
        continue
    found += errors(options.name, panel.get("options", {}), f"{where}/options")
    custom = SCHEMAS / f"{kind_name}.fieldconfig.schema.json"
    if custom.exists():
        found += errors(custom.name, panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}), f"{where}/fieldConfig/defaults/custom")
    checked += 1
if found:
    sys.exit("\n".join(found))
print(f"dashboard valid; {checked} panels' options valid")
