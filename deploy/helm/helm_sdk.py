"""Lint and render deploy/helm/ptwatch with Helm's own Go SDK (PyPI
helm-python-sdk: no helm binary is packaged anywhere this project can reach).
Run by agent/tests/deploy_helm.rs with the venv of `cargo xtask setup --for test`.

  helm_sdk.py lint CHART VALUES_JSON      -> the lint report (JSON), strict
  helm_sdk.py render CHART VALUES_JSON    -> {template path: manifest} (JSON)

Exit 1 with the error when Helm raises (bad values, failed template)."""
import json
import sys

import helm_python as helm

command, chart, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    if command == "lint":
        # As `helm lint --strict`: warnings count as errors.
        result = helm.lint(chart, values, strict=True, namespace="ptwatch", kube_version="v1.30.0")
    elif command == "render":
        result = helm.Chart.load(chart).render(values, name="ptwatch", namespace="ptwatch", is_install=True)
    else:
        sys.exit(f"unknown command {command}")
except helm.HelmError as err:
    sys.exit(f"helm: {err}")
print(json.dumps(result))
