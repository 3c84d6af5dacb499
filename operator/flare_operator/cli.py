"""`flare-operator` command line: generate CRDs, validate manifests, print the version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from . import __version__


def _validate(paths: list[Path]) -> int:
    from .sdk.validate import check_manifests

    results = check_manifests(paths)
    for r in results:
        label = f"{r['file']}: {r['object']}"
        print(f"ok      {label}" if r["valid"] else f"invalid {label}: {r['error']}")
    return 0 if all(r["valid"] for r in results) else 1


def _job_results(kubeconfig: Path | None, namespace: str, name: str) -> dict:
    """``status.results`` of FederatedJob namespace/name, or exit saying why there are none."""
    from .runtime.kube import Kube

    job = Kube.from_kubeconfig(kubeconfig).get("FederatedJob", namespace, name)
    if job is None:
        raise SystemExit(f"FederatedJob {namespace}/{name} not found")
    results = (job.get("status") or {}).get("results") or {}
    if not results.get("location"):
        phase = (job.get("status") or {}).get("phase") or "not started"
        raise SystemExit(f"FederatedJob {namespace}/{name} has no results (yet): it is {phase}")
    return results


def _fetch(args) -> int:
    from .sdk.results import download_results

    results = _job_results(args.kubeconfig, args.namespace, args.job)
    paths = download_results(results, args.out, endpoint_url=args.endpoint_url, region=args.region)
    total = sum(p.stat().st_size for p in paths)
    print(f"fetched {len(paths)} files ({total / 1e6:.1f} MB, each checked against its sha256 in the job's status) "
          f"from {results['location']} to {args.out}")
    return 0


def _report(args) -> int:
    from .sdk.report import format_table, load_metrics, plot_accuracy, round_rows

    metrics_file = args.metrics
    if metrics_file is None:
        if not args.job:
            raise SystemExit("give --metrics FILE or --job NAME")
        location = _job_results(args.kubeconfig, args.namespace, args.job)["location"]
        if "://" in location:
            raise SystemExit(f"the results of {args.namespace}/{args.job} are in {location}: download them with "
                             f"`flare-operator fetch --job {args.job} -n {args.namespace} --out DIR`, then "
                             "`flare-operator report --metrics DIR/metrics.json`")
        metrics_file = Path(location) / "metrics.json"
    metrics = load_metrics(metrics_file)
    print(format_table(*round_rows(metrics)))
    if args.plot:
        print(f"plot: {plot_accuracy(metrics, args.plot)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flare-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version")
    crds = sub.add_parser("crds", help="write the CRD YAML and docs/api.md (or --check for drift)")
    crds.add_argument("--root", type=Path, default=Path.cwd())
    crds.add_argument("--check", action="store_true")
    run = sub.add_parser("run", help="run the operator (orchestrator, gateways, or both)")
    run.add_argument("--config", type=Path, required=True, help="operator configuration YAML")
    run.add_argument("--kubeconfig", type=Path, default=None, help="default: in-cluster, then ~/.kube/config")
    run.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true")
    report = sub.add_parser("report", help="a finished job's per-round table (and --plot PNG)")
    report.add_argument("--metrics", type=Path, help="a results metrics.json")
    report.add_argument("--job", help="FederatedJob name (its status names the results location)")
    report.add_argument("-n", "--namespace", default="default")
    report.add_argument("--kubeconfig", type=Path, default=None)
    report.add_argument("--plot", type=Path, help="write a PNG of accuracy per round per site here")
    fetch = sub.add_parser("fetch", help="download a finished job's results (checked against the sha256 "
                           "of each file in its status) from the results store")
    fetch.add_argument("--job", required=True, help="FederatedJob name")
    fetch.add_argument("-n", "--namespace", default="default")
    fetch.add_argument("--kubeconfig", type=Path, default=None)
    fetch.add_argument("--out", type=Path, required=True, help="folder to download into")
    fetch.add_argument("--endpoint-url", default=None,
                       help="S3-compatible endpoint of an s3:// location (default: $AWS_ENDPOINT_URL, else AWS S3); "
                       "credentials: boto3's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, ...)")
    fetch.add_argument("--region", default="us-east-1")
    rbac = sub.add_parser("rbac", help="print the ClusterRoles flare-modeller and flare-org-admin as YAML "
                          "(or, with --gateway-hub, a site's scoped hub credential's Role and RoleBinding)")
    rbac.add_argument("--gateway-hub", metavar="NAMESPACE",
                      help="an org's hub namespace: print the Role flare-gateway there, bound to --user")
    rbac.add_argument("--user", help="with --gateway-hub: the site's hub identity (e.g. gateway-org-b)")
    validate = sub.add_parser("validate", help="validate flareop.io manifests offline, as the API server would")
    validate.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "crds":
        from .api import crdgen

        return crdgen.main(["--root", str(args.root)] + (["--check"] if args.check else []))
    if args.command == "report":
        return _report(args)
    if args.command == "fetch":
        return _fetch(args)
    if args.command == "rbac":
        from .builders.rbac import (
            gateway_hub_role,
            modeller_cluster_role,
            org_admin_cluster_role,
            role_binding,
        )

        if args.gateway_hub:
            if not args.user:
                parser.error("rbac --gateway-hub needs --user (the site's identity on the hub)")
            role = gateway_hub_role(args.gateway_hub)
            objs = [role, role_binding(args.gateway_hub, role["metadata"]["name"], user=args.user)]
        else:
            objs = [modeller_cluster_role(), org_admin_cluster_role()]
        print(yaml.safe_dump_all(objs, sort_keys=False), end="")
        return 0
    if args.command == "run":
        from .main import main as run_operator

        return run_operator(args.config, args.kubeconfig, args.liveness, args.verbose)
    return _validate(args.paths)


if __name__ == "__main__":
    sys.exit(main())
