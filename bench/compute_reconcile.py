"""ComputeSpec apply -> all workload objects created, on a local control plane (kubernetes runtime).

Measures, in the same run and on the same API server:
- operator: `kubectl apply` of N ComputeSpecs -> the server StatefulSet and every site's client
  StatefulSet exist (the orchestrator asked both orgs, both gateways answered, the project was
  provisioned with its own CA, kits delivered, manifests applied);
- baseline: `kubectl apply` of the same final manifests directly (what a person would do by hand,
  with no decisions, no provisioning);
and prints p50/p95 of each, their ratio, and the operator's API requests per reconcile pass
(from its Prometheus metrics).

    .venv/bin/python bench/compute_reconcile.py [--count 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flare_operator.builders.naming import federation_name  # noqa: E402
from tests.operator_harness import (  # noqa: E402
    OperatorProcess,
    apply,
    compute,
    create_org_namespace,
    free_port,
    gateway_config,
    grant,
    install_crds,
    scrape,
)
from tests.support.controlplane import ControlPlane  # noqa: E402


def _statefulsets(cp) -> set[str]:
    items = json.loads(cp.kubectl("get", "statefulsets", "-A", "-o", "json").stdout)["items"]
    return {f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in items}


def _wait_all(cp, wanted: dict[str, set[str]], started: dict[str, float], timeout: float = 600) -> dict[str, float]:
    """Seconds from each item's apply until all its StatefulSets exist."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(wanted):
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(done)}/{len(wanted)} done")
        seen = _statefulsets(cp)
        now = time.monotonic()
        for key, names in wanted.items():
            if key not in done and names <= seen:
                done[key] = now - started[key]
        time.sleep(0.05)
    return done


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flareop-bench-"))
    cp = ControlPlane.start(work / "cluster", "bench")
    op = None
    try:
        install_crds(cp)
        for ns in ("org-a", "org-b", "modeller", "baseline"):
            create_org_namespace(cp, ns, ns)
        apply(cp, grant("org-a", "scl-a", "modeller"), grant("org-b", "scl-b", "modeller"))
        sites = [dict(gateway_config(o, o), runtime="kubernetes") for o in ("org-a", "org-b")]
        port = free_port()
        config = {"mode": "all", "runtime": "kubernetes", "adminRoute": "none", "resyncSeconds": 5, "heartbeatSeconds": 10,
                  "gateways": sites, "metricsPort": port}
        op = OperatorProcess(cp, work, config).start()
        # Measure steady state: wait until both gateways registered (the operator is up and watching).
        deadline = time.monotonic() + 120
        while cp.kubectl("get", "gateway", "org-b", "-n", "org-b", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("gateways did not register:\n" + op.tail())
            time.sleep(0.1)

        started, wanted = {}, {}
        for i in range(args.count):
            name = f"bench-{i:02d}"
            fed = federation_name("modeller", name)
            wanted[name] = {f"modeller/{fed}-server", f"org-a/{fed}-org-a", f"org-b/{fed}-org-b"}
            started[name] = time.monotonic()
            apply(cp, compute("modeller", name, [("org-a", "scl-a"), ("org-b", "scl-b")]))
        operator_latency = _wait_all(cp, wanted, started)
        metrics = scrape(port)

        # Baseline: the same final manifests, applied directly.
        manifests = []
        for name in started:
            fed = federation_name("modeller", name)
            for ns, sts in (("modeller", f"{fed}-server"), ("org-a", f"{fed}-org-a"), ("org-b", f"{fed}-org-b")):
                obj = json.loads(cp.kubectl("get", "statefulset", sts, "-n", ns, "-o", "json").stdout)
                manifests.append({"apiVersion": "apps/v1", "kind": "StatefulSet",
                                  "metadata": {"name": f"b-{sts}"[:52], "namespace": "baseline"},
                                  "spec": obj["spec"]})
        base_started, base_wanted = {}, {}
        for i in range(0, len(manifests), 3):
            key = f"baseline-{i // 3:02d}"
            base_started[key] = time.monotonic()
            apply(cp, *manifests[i:i + 3])
            base_wanted[key] = {f"baseline/{m['metadata']['name']}" for m in manifests[i:i + 3]}
        baseline_latency = _wait_all(cp, base_wanted, base_started)

        op_values, base_values = list(operator_latency.values()), list(baseline_latency.values())
        reconciles = sum(v for k, v in metrics.items() if k.startswith("flareop_reconcile_total"))
        requests = sum(v for k, v in metrics.items() if k.startswith("flareop_api_requests_total"))
        rows = {
            "computespecs": args.count,
            "operator p50 s": round(statistics.median(op_values), 3),
            "operator p95 s": round(_pct(op_values, 0.95), 3),
            "baseline (direct kubectl apply) p50 s": round(statistics.median(base_values), 3),
            "baseline p95 s": round(_pct(base_values, 0.95), 3),
            "ratio p50 operator/baseline": round(statistics.median(op_values) / statistics.median(base_values), 2),
            "reconcile passes": int(reconciles),
            "API requests": int(requests),
            "API requests per reconcile": round(requests / max(reconciles, 1), 2),
        }
        print(yaml.safe_dump(rows, sort_keys=False))
        return 0
    finally:
        if op:
            op.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
