"""Validate the PodMonitor documents of a rendered manifest (stdin) against
schemas/podmonitor-v1.schema.json; exit 1 with the errors, or if none is found.
Run by agent/tests/deploy_static.rs with the venv of `cargo xtask setup`."""
import json
import pathlib
import sys

import jsonschema
import yaml

schema = json.loads((pathlib.Path(__file__).parent / "schemas/podmonitor-v1.schema.json").read_text())
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
monitors = [d for d in yaml.safe_load_all(sys.stdin) if d and d.get("kind") == "PodMonitor"]
if not monitors:
    sys.exit("no PodMonitor in the input")
errors = [f"{m['metadata'].get('name')}: {'/'.join(map(str, e.path))}: {e.message}" for m in monitors for e in validator.iter_errors(m)]
if errors:
    sys.exit("\n".join(errors))
print(f"{len(monitors)} PodMonitor valid")
