"""FederatedJob vs the same NVFlare job submitted directly: the platform's overhead, same federation, same run.

One local control plane, two orgs (Automatic OrgPolicies, generated data), the operator (process
runtime) with a Ready ComputeSpec: one NVFlare server and one client per org, which serve both arms.

- (a) operator: create a FederatedJob (esm2-finetune, tiny, fixed seed, no DP) and time
  create -> NVFlare accepted it, -> first round (status.currentRound >= 1) and -> Succeeded
  (results downloaded and hashed, logs collected) as a watch on the API server sees them;
- (b) direct: build the identical NVFlare job (builders/nvflare_job.build_job with the same app,
  parameters, sites and dataset references as the operator) and submit it with the FLARE API
  through the operator's admin kit; time build -> first round (the server workspace's
  metrics.json records round 0) and -> FINISHED:COMPLETED with the results downloaded.

Both arms also record the same ground truth: when the server accepted the job (job meta
submit_time), when its metrics.json recorded round 0 and when the job meta said FINISHED; for (a)
the server's audit log says when the operator's pass saw the job finished (its download) and when
it collected the sites' logs. CPU seconds of the operator process and of the control plane's
processes are read from /proc for each run.

Site enforcement stays on: each client takes only jobs whose flareop meta (FederatedJob uid +
contentHash) its org approved. The direct submissions carry the uid and contentHash of a
FederatedJob with the same spec that both orgs approved and that is held with `suspend: true` (the
operator never submits it): a direct run of content both orgs approved. `suspend` is not part of
the content hash, so its hash equals every arm-(a) job's (checked).

Arms alternate (a warm-up, then a b b a a b b a ...) so a drift of the shared machine's load hits both;
medians and ratios are printed. Both arms poll NVFlare the same way (job meta every 0.5 s,
metrics.json every 0.25 s); arm (a) watches its FederatedJob (no polling of the API server).

--runtime kubernetes: the same comparison with the NVFlare server and clients as real Pods (the
project's runtime image) on a cluster with a real node (`ControlPlane.start(real_nodes=1)`, root;
FLARE_REAL_NODE_CLUSTER=DIR attaches to one already running and leaves it running; the images
from `make images`, FLARE_IMAGES_JSON overrides), set up as tests/node/test_kubernetes_runtime.py
does (nodeSelector of the real node, datasets in a world-readable folder mounted by hostPath,
server 400m/2Gi and clients 700m/2Gi). The operator runs outside the cluster and reaches the
server's admin port through a relay over the API server's port-forward; arm (b) uses the
federation's admin kit (its Secret) through such a relay too. Nothing reads the server's disk:
both arms see round 0 through the server app's `flareop.progress` app command (every 0.5 s,
alternating with the job meta), the sites' approvals are read from their `<fed>-approved-jobs`
ConfigMaps and from the file mounted in each client Pod, and the audit-log ground truths print n/a.

    .venv/bin/python bench/job_overhead.py [--repeats 4] [--rounds 3] [--local-steps 5] [--resync-seconds 5]
        [--runtime process|kubernetes]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flare_operator.api.compute import ComputeSpecSpec  # noqa: E402
from flare_operator.api.job import FederatedJobSpec  # noqa: E402
from flare_operator.api.kinds import GROUP, VERSION  # noqa: E402
from flare_operator.builders.federation import ADMIN_IDENTITY, client_name  # noqa: E402
from flare_operator.builders.nvflare_job import (  # noqa: E402
    aggregation_from_api,
    build_job,
    privacy_from_api,
    sites_for,
    write_job,
)
from flare_operator.builders.requests import LABEL_REQUEST_KIND, LABEL_SOURCE_NAME, datasets_by_org  # noqa: E402
from flare_operator.catalog import load_app  # noqa: E402
from tests.e2e.conftest import BASE_PARAMS, DATA_ARGS  # noqa: E402
from tests.operator_harness import (  # noqa: E402
    OperatorProcess,
    apply,
    compute,
    create_org_namespace,
    gateway_config,
    get,
    grant,
    install_crds,
    operator_config,
    remove_namespaces,
    wait_phase,
)
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.kube_fixtures import wait_for  # noqa: E402

ORGS = ("org-a", "org-b")
MODELLER = "modeller"
DATASETS = ("scl-a", "scl-b")  # one per org, in ORGS' order
COMPUTE = "esm2"
TICK = 0.25  # seconds between the bench's own looks (status / metrics.json); job meta every 2nd tick
FAILED = {"Failed", "TimedOut", "Aborted", "Rejected"}
REFUSED = ("refuses", "not approved")  # a site's enforcement refusing a job, in its schedule_history


def job_object(name: str, rounds: int, local_steps: int, *, suspend: bool = False, namespace: str = MODELLER) -> dict:
    spec = {"computeSpecRef": {"name": COMPUTE}, "rounds": rounds,
            "parameters": {**BASE_PARAMS, "localSteps": local_steps}, "activeDeadlineSeconds": 900}
    if suspend:
        spec["suspend"] = True
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FederatedJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""  # the kubelet swapping the folder


def refusals(meta: dict) -> list[str]:
    return [h for h in meta.get("schedule_history") or [] if any(r in h for r in REFUSED)]


class Bench:
    def __init__(self, cp: ControlPlane, flare: Path, federation: str, admin, op_pid: int, args,
                 modeller: str = MODELLER, op_log: Path | None = None, approval_files=None):
        from kubernetes import client

        self.cp, self.args, self.admin, self.op_pid, self.modeller = cp, args, admin, op_pid, modeller
        self.op_log, self.approval_files = op_log, approval_files
        self.kubernetes = args.runtime == "kubernetes"
        # Not the operator: its command line names the cluster's kubeconfig, which running_pids() matches.
        self.cp_pids = [p for p in cp.running_pids() if p != op_pid]
        self.server_root = flare / federation  # <workdir>/<federation>/<server participant>/<job id>/...
        self.api = cp.api_client()
        self.custom = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    # --- what both arms observe, the same way ------------------------------------------------

    def _round0_done(self, job_id: str) -> bool:
        if self.kubernetes:  # no server disk to read: the server app's progress command, as the operator asks it
            from flare_operator.nvflare.admin import FlareUnavailable

            try:
                return (self.admin.progress(job_id) or {}).get("last_completed_round") is not None
            except FlareUnavailable:
                return False  # asked again on the next look
        for path in self.server_root.glob(f"*/{job_id}/app_server/results/metrics.json"):
            try:
                return json.loads(path.read_text()).get("last_completed_round") is not None
            except (OSError, ValueError):
                return False  # being rewritten
        return False

    def audit(self, job_id: str, action: str) -> list[float] | None:
        """When the server's audit log records `action` on the job (the operator's own FLARE API calls);
        None with the kubernetes runtime (the log is on the server Pod's volume)."""
        from datetime import datetime

        if self.kubernetes:
            return None
        times = []
        for path in self.server_root.glob("*/audit.log"):
            for line in path.read_text(errors="replace").splitlines():
                if f"[A:{action} {job_id}" in line:
                    stamp = line.split("[T:", 1)[1].split("]", 1)[0]
                    times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp())
        return sorted(times)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (the operator process itself, the control plane's processes):
        their own threads, not the NVFlare participants the operator started. With a real node the
        second figure includes the node's agents (kubelet, containerd, kube-proxy, CoreDNS), not the
        Pods' containers."""
        def used(pid: int) -> float:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return 0.0
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        return used(self.op_pid), sum(used(p) for p in self.cp_pids)

    class _Watch:
        """Round 0 recorded in the server's metrics.json, and NVFlare's FINISHED state (0.5 s poll).
        Kubernetes runtime: round 0 from the progress app command, both every 0.5 s, alternating
        (one FLARE API session serves both)."""

        def __init__(self, bench: Bench, t0: float):
            self.bench, self.t0, self.ticks = bench, t0, 0
            self.round0: float | None = None
            self.finished: float | None = None
            self.state = ""

        def look(self, job_id: str | None) -> None:
            self.ticks += 1
            if job_id is None:
                return
            now = time.time()
            # Kubernetes: ask only a job NVFlare runs, as the operator does (the session is re-opened
            # after every error, e.g. JobNotRunning: a new port-forward stream each time).
            progress_tick = self.ticks % 2 == 1 and self.state == "RUNNING" if self.bench.kubernetes else True
            if self.round0 is None and progress_tick and self.bench._round0_done(job_id):
                self.round0 = now - self.t0
            if self.finished is None and self.ticks % 2 == 0:
                self.state = str(self.bench.job_meta(job_id).get("status", ""))
                if self.state.startswith("FINISHED"):
                    self.finished = now - self.t0

    def job_meta(self, job_id: str) -> dict:
        if not self.kubernetes:
            return self.admin.job_meta(job_id)
        from flare_operator.nvflare.admin import FlareUnavailable

        try:
            return self.admin.job_meta(job_id)
        except FlareUnavailable:  # a relayed stream that broke: the next look asks again
            return {}

    def op_log_size(self) -> int:
        return self.op_log.stat().st_size if self.op_log and self.op_log.exists() else 0

    def op_errors(self, since: int) -> int | None:
        """ERROR lines the operator logged since byte offset `since` (a handler that failed and is retried)."""
        if not self.op_log:
            return None
        with self.op_log.open("rb") as f:
            f.seek(since)
            return sum(1 for line in f.read().decode(errors="replace").splitlines() if " ERROR " in line)

    @staticmethod
    def _started(meta: dict, t0: float) -> float | None:
        """When NVFlare started the job (scheduled and deployed it to the sites): meta start_time."""
        from datetime import datetime

        try:
            return datetime.fromisoformat(str(meta.get("start_time"))).timestamp() - t0
        except ValueError:
            return None

    # --- (a) through the operator -------------------------------------------------------------

    def operator_run(self, name: str, timeout: float = 900) -> dict:
        import threading

        from kubernetes import watch as kwatch

        ns = self.modeller
        body = job_object(name, self.args.rounds, self.args.local_steps, namespace=ns)
        seen: dict[str, float] = {}  # first time the watch saw: "job_id", "round>=1", "Succeeded"
        last: dict = {}

        def follow() -> None:  # a watch, not polling: observing costs the API server nothing per tick
            w = kwatch.Watch()
            for event in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, ns,
                                  "federatedjobs", field_selector=f"metadata.name={name}",
                                  timeout_seconds=int(timeout)):
                now, status = time.time(), (event["object"].get("status") or {})
                last.update(status=status)
                if status.get("nvflareJobId"):
                    seen.setdefault("job_id", now)
                    last.setdefault("job_id", status["nvflareJobId"])
                if (status.get("currentRound") or 0) >= 1:
                    seen.setdefault("round>=1", now)
                if status.get("phase") == "Succeeded" or status.get("phase") in FAILED:
                    seen.setdefault("end", now)
                    w.stop()

        approvals: dict[str, float] = {}  # AccessRequest -> when the watch first saw it Approved for its content

        def follow_approvals() -> None:  # each org's answer to this job, as the operator's watch would see it
            w = kwatch.Watch()
            for event in w.stream(self.custom.list_cluster_custom_object, GROUP, VERSION, "accessrequests",
                                  label_selector=f"{LABEL_SOURCE_NAME}={name},{LABEL_REQUEST_KIND}=Job",
                                  timeout_seconds=int(timeout)):
                obj, now = event["object"], time.time()
                status, spec = obj.get("status") or {}, obj.get("spec") or {}
                if status.get("decision") == "Approved" and status.get("decidedHash") == spec.get("contentHash"):
                    approvals.setdefault(obj["metadata"]["namespace"], now)
                if "end" in seen:
                    w.stop()

        files = self.approval_files() if self.approval_files else []
        in_file: dict[Path, float] = {}  # kubernetes: when each client Pod's approved-jobs file listed the job
        load, (op0, cp0), log0 = os.getloadavg()[0], self.cpu(), self.op_log_size()
        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        threading.Thread(target=follow_approvals, daemon=True).start()
        time.sleep(0.5)  # the watch is open before the job exists
        t0 = time.time()
        uid = self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "federatedjobs", body)["metadata"]["uid"]
        watch = self._Watch(self, t0)
        while "end" not in seen:
            if time.time() - t0 > timeout or not thread.is_alive():
                raise TimeoutError(f"{name}: {json.dumps(last.get('status'))[-2000:]}")
            for path in files:
                if path not in in_file and uid in _read(path):
                    in_file[path] = time.time() - t0
            watch.look(last.get("job_id"))
            time.sleep(TICK)
        thread.join(10)
        op1, cp1 = self.cpu()
        status, job_id = last["status"], last.get("job_id")
        if status.get("phase") != "Succeeded":
            raise RuntimeError(f"{name} ended {status.get('phase')}: {json.dumps(status)[-2000:]}")
        if watch.finished is None:  # Succeeded came before the bench's own 0.5 s look saw FINISHED
            watch.finished = seen["end"] - t0
        downloads, logs = self.audit(job_id, "job_mgmt.download_job"), self.audit(job_id, "get_job_log")
        meta = self.admin.job_meta(job_id)
        refused = refusals(meta)
        if not self.kubernetes:
            self._check_not_refused(meta)
        # Kubernetes runtime: a site whose client Pod does not see the approval yet (the kubelet
        # refreshes the mounted approved-jobs ConfigMap within its sync period) refuses the first
        # scheduling tries; NVFlare's scheduler tries again (10 s, then 20 s, ...): counted, not an error.
        done = seen["end"] - t0
        row = {"arm": "a", "name": name, "job_id": job_id, "content_hash": status.get("contentHash"),
               "to_server_accepted": float(meta["submit_time"]) - t0, "submitted_seen": seen["job_id"] - t0,
               # the issue's "approval -> submission": the last org's approval (as a watch saw it) -> NVFlare accepted
               "approval_to_accepted": (float(meta["submit_time"]) - max(approvals.values())
                                        if len(approvals) == len(ORGS) else None),
               "started": self._started(meta, t0),
               "first_round": seen.get("round>=1", seen["end"]) - t0, "first_round_server": watch.round0,
               "flare_finished": watch.finished, "done": done, "operator_cpu": op1 - op0,
               "controlplane_cpu": cp1 - cp0, "load": load, "refusals": len(refused),
               "op_errors": self.op_errors(log0),
               "in_pod_files": max(in_file.values()) if files and len(in_file) == len(files) else None,
               # the operator's pass that saw FINISHED downloads first, then asks for the sites' logs
               "detected": downloads[0] - t0 if downloads else None,
               "logs_asked": None if logs is None else len(logs),
               "logs_done": logs[-1] - t0 if logs else None,
               "val_accuracy": (status.get("globalMetrics") or {}).get("val_accuracy")}
        # Keep the operator's background work the same for every repetition: the finished job goes.
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "federatedjobs", name)
        wait_for(lambda: get(self.cp, "federatedjob", ns, name) is None, timeout=120,
                 message=f"{name} deleted")
        return row

    # --- (b) straight to NVFlare --------------------------------------------------------------

    def direct_run(self, tag: str, approved: dict, compute_obj: dict, timeout: float = 900) -> dict:
        """What the operator's run.py does, by hand: build with the same inputs, submit, poll, download."""
        job_spec = FederatedJobSpec.model_validate(job_object("x", self.args.rounds, self.args.local_steps)["spec"])
        compute_spec = ComputeSpecSpec.model_validate(compute_obj["spec"])
        load, (op0, cp0), log0 = os.getloadavg()[0], self.cpu(), self.op_log_size()
        t0 = time.time()
        app = load_app(compute_spec.model.id, compute_spec.model.version)
        sites = sites_for(datasets_by_org(compute_spec), client_name)
        files = build_job(app, {**job_spec.parameters, "rounds": job_spec.rounds}, sites,
                          job_name=f"{self.modeller}-{tag}"[:60],
                          privacy=privacy_from_api(job_spec.privacy.to_wire(), job_spec.rounds),
                          aggregation=aggregation_from_api(job_spec.aggregation.to_wire()),
                          metadata={"uid": approved["uid"], "contentHash": approved["contentHash"], "attempt": 1,
                                    "job": f"{self.modeller}/{approved['name']}"})
        with tempfile.TemporaryDirectory(prefix="flareop-direct-") as tmp:
            job_id = self.admin.submit(write_job(files, tmp), f"direct-{tag}-{approved['uid']}"[:128])
        watch = self._Watch(self, t0)
        while watch.finished is None:
            if time.time() - t0 > timeout:
                raise TimeoutError(f"direct {tag}: NVFlare job {job_id} is {watch.state}")
            watch.look(job_id)
            if watch.finished is None:
                time.sleep(TICK)
        if watch.state != "FINISHED:COMPLETED":
            raise RuntimeError(f"direct {tag}: NVFlare job {job_id} ended {watch.state}")
        with tempfile.TemporaryDirectory(prefix="flareop-direct-dl-") as tmp:
            self.admin.download(job_id, Path(tmp))  # the operator downloads the results too
            done = time.time() - t0
            op1, cp1 = self.cpu()
            record = next((json.loads(p.read_text()) for p in Path(tmp).rglob("app_server/results/metrics.json")), {})
        meta = self.admin.job_meta(job_id)
        self._check_not_refused(meta)  # the held job's approval reached the sites long before
        return {"arm": "b", "name": tag, "job_id": job_id, "to_server_accepted": float(meta["submit_time"]) - t0,
                "submitted_seen": float(meta["submit_time"]) - t0, "started": self._started(meta, t0),
                "first_round": watch.round0,
                "first_round_server": watch.round0, "flare_finished": watch.finished, "done": done,
                "operator_cpu": op1 - op0, "controlplane_cpu": cp1 - cp0, "load": load, "refusals": 0,
                "op_errors": self.op_errors(log0),
                "val_accuracy": ((record.get("final") or {}).get("global") or {}).get("val_accuracy")}

    @staticmethod
    def _check_not_refused(meta: dict) -> None:
        refused = refusals(meta)
        if refused:
            raise RuntimeError(f"a site refused NVFlare job {meta.get('job_id')}: {refused}")


def approved_at_site(flare: Path, federation: str, org: str) -> dict[str, str]:
    path = flare / f"site-{org}" / federation / client_name(org) / "enforcement" / "approved.json"
    if not path.exists():
        return {}
    return {e["uid"]: e["contentHash"] for e in json.loads(path.read_text())["approved"]}


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:7.2f}"


def report(rows: list[dict], args, load: tuple[float, float]) -> None:
    kubernetes = args.runtime == "kubernetes"
    a = [r for r in rows if r["arm"] == "a"]
    b = [r for r in rows if r["arm"] == "b"]
    for r in a + b:
        r["flare_run"] = r["flare_finished"] - r["to_server_accepted"]
        r["after_finish"] = r["done"] - r["flare_finished"]
        if r.get("started") is not None:
            r["to_started"] = r["started"] - r["to_server_accepted"]
            r["started_run"] = r["flare_finished"] - r["started"]
    for r in a:
        if r.get("detected") is not None:
            r["detect_wait"] = r["detected"] - r["flare_finished"]
            r["log_wait"] = (r["logs_done"] if r.get("logs_done") is not None else r["detected"]) - r["detected"]
    print("\nper run, seconds from the create (a) / from the start of the build (b):")
    print(f"{'run':<16}{'load1':>6}{'accepted':>9}{'round 0':>9}{'round>=1 seen':>14}{'NVFlare done':>13}"
          f"{'done':>8}{'op CPU':>8}{'cp CPU':>8}{'val_acc':>9}"
          + (f"{'in files':>9}{'started':>9}{'refused':>8}{'op ERRORs':>10}" if kubernetes else ""))
    for r in rows:
        acc = r.get("val_accuracy")
        print(f"{r['arm'] + ' ' + r['name']:<16}{r['load']:6.1f}{fmt(r['to_server_accepted']):>9}"
              f"{fmt(r['first_round_server']):>9}{fmt(r['first_round']):>14}{fmt(r['flare_finished']):>13}"
              f"{fmt(r['done']):>8}{r['operator_cpu']:8.2f}{r['controlplane_cpu']:8.2f}"
              f"{'—' if acc is None else f'{acc:.4f}':>9}"
              + (f"{fmt(r.get('in_pod_files')):>9}{fmt(r.get('started')):>9}{r['refusals']:>8}"
                 f"{r.get('op_errors', '—')!s:>10}" if kubernetes else ""))

    def line(label: str, key: str, na: bool = False) -> None:
        if na:  # needs the server's disk, which the kubernetes runtime keeps on a Pod's volume
            print(f"{label:<58}{'n/a':>10}{'':>11}{'':>8}")
            return
        ma, mb = median(a, key), median(b, key)
        ratio = f"{ma / mb:7.3f}" if ma is not None and mb else "      —"
        print(f"{label:<58}{fmt(ma):>10}{fmt(mb):>11}{ratio:>8}")

    print(f"\nmedians over {len(a)} + {len(b)} runs; {args.rounds} rounds x {args.local_steps} local steps, "
          f"operator resyncSeconds {args.resync_seconds:g}" + ("; runtime kubernetes (Pods on a real node)"
                                                              if kubernetes else ""))
    print(f"{'':<58}{'(a) op':>10}{'(b) direct':>11}{'a/b':>8}")
    line("total: create -> Succeeded | build -> done + downloaded", "done")
    if kubernetes:
        line("first round, as seen: currentRound>=1 | progress command", "first_round")
        line("first round in the server app's progress (round 0)", "first_round_server")
    else:
        line("first round, as seen: currentRound>=1 | metrics.json", "first_round")
        line("first round in the server's metrics.json (round 0)", "first_round_server")
    line("NVFlare accepted the job (meta submit_time)", "to_server_accepted")
    line("(a) last org's approval (watch) -> NVFlare accepted", "approval_to_accepted")
    if kubernetes:
        line("  accepted -> started at the sites (meta start_time)", "to_started")
        line("(a) create -> approval in both client Pods' files", "in_pod_files")
    line("NVFlare run: accepted -> FINISHED (0.5 s poll)", "flare_run")
    if kubernetes:
        line("  of which started -> FINISHED (training, the same job)", "started_run")
    line("after FINISHED: -> Succeeded | -> downloaded", "after_finish")
    line("  of which FINISHED -> the operator's pass sees it", "detect_wait", na=kubernetes)
    line("  of which download + waiting for the sites' logs", "log_wait", na=kubernetes)
    line("operator process CPU seconds during the run", "operator_cpu")
    if kubernetes:
        line("control plane + node agents (kubelet, ...) CPU seconds", "controlplane_cpu")
    else:
        line("control plane (apiserver, etcd, ...) CPU seconds", "controlplane_cpu")
    ma, mb = median(a, "done"), median(b, "done")
    # The NVFlare run is the same job on the same processes in both arms: what differs is before
    # (admission, approval, build, submit) and after (detection, download). Under a noisy machine
    # the estimate below is steadier than the raw ratio; it misses only the operator's CPU use
    # while the job runs (the last line above says how much that is).
    fixed = (median(a, "to_server_accepted") - median(b, "to_server_accepted")
             + median(a, "after_finish") - median(b, "after_finish"))
    if kubernetes:
        print("operator's get_job_log calls per job: n/a (the server's audit log is on its Pod's volume)")
        print(f"arm (a) scheduling tries a site refused (approval not yet in its client Pod's file): "
              f"{[r['refusals'] for r in a]}")
    else:
        asks = [r["logs_asked"] for r in a if r.get("logs_asked") is not None]
        print(f"operator's get_job_log calls per job: {asks}")
    print(f"\nRATIO total (a)/(b) = {ma / mb:.3f}  (target <= 1.05); {ma - mb:+.1f} s per job"
          + ("  [runtime kubernetes]" if kubernetes else ""))
    print(f"platform time before + after the NVFlare run: {fixed:+.1f} s -> (b + that)/b = {(mb + fixed) / mb:.3f}")
    if kubernetes and median(a, "to_started") is not None and median(b, "to_started") is not None:
        # Inside the NVFlare run, but the platform's: sites refusing until their approval file caught up.
        sched = median(a, "to_started") - median(b, "to_started")
        print(f"  + NVFlare accepted -> started (sites' approval files catching up): {sched:+.1f} s -> "
              f"(b + both)/b = {(mb + fixed + sched) / mb:.3f}")
    print(f"load average 1 min at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


# --- the federation both arms share ------------------------------------------------------------


@dataclass
class Federation:
    cp: ControlPlane
    op: OperatorProcess
    admin: object  # FlareAdmin
    federation: str
    flare: Path  # the process runtime's workdir (unused with the kubernetes runtime)
    modeller: str
    approved_everywhere: object  # (uid, contentHash) -> bool: every site's client takes the job
    approval_files: object = None  # () -> the approved-jobs file each client Pod reads, on the node's disk


def tail_on_error(op: OperatorProcess):
    """An ExitStack exit callback: the operator's last log lines when the bench failed."""
    def show(exc_type, exc, tb) -> bool:
        if exc_type is not None:
            print(op.tail(80))
        return False

    return show


def process_federation(args, work: Path, stack: contextlib.ExitStack) -> Federation:
    """A fresh control plane with kwok nodes; the operator runs NVFlare as local processes."""
    from flare_operator.datagen import GeneratorConfig, write_dataset
    from flare_operator.nvflare.admin import FlareAdmin

    data = write_dataset(GeneratorConfig(**DATA_ARGS), work / "data")
    paths = [s["path"] for s in data["sites"].values()]
    cp = ControlPlane.start(work / "cluster", "benchjob")
    stack.callback(cp.stop)
    install_crds(cp)
    for ns in (*ORGS, MODELLER):
        create_org_namespace(cp, ns, ns)
    policy = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OrgPolicy", "spec": {"approvalMode": "Automatic"}}
    apply(cp, *(grant(org, ds, MODELLER, path=str(path)) for org, ds, path in zip(ORGS, DATASETS, paths, strict=True)),
          *({**policy, "metadata": {"name": "default", "namespace": org}} for org in ORGS))
    config = operator_config(work, [gateway_config(org, org) for org in ORGS], namespaces=[MODELLER],
                             resyncSeconds=args.resync_seconds, heartbeatSeconds=10)
    op = OperatorProcess(cp, work, config).start()
    stack.callback(op.stop)
    stack.push(tail_on_error(op))
    t = time.time()
    apply(cp, compute(MODELLER, COMPUTE, list(zip(ORGS, DATASETS, strict=True))))
    ready = wait_phase(cp, "computespec", MODELLER, COMPUTE, "Ready", timeout=300)
    federation = ready["status"]["project"]
    print(f"ComputeSpec Ready in {time.time() - t:.1f} s (federation {federation})", flush=True)
    flare = work / "flare"
    admin = FlareAdmin(flare / federation / ADMIN_IDENTITY, timeout=10.0)
    stack.callback(admin.close)

    def approved_everywhere(uid: str, content_hash: str) -> bool:
        return all(approved_at_site(flare, federation, org).get(uid) == content_hash for org in ORGS)

    return Federation(cp, op, admin, federation, flare, MODELLER, approved_everywhere)


def kubernetes_federation(args, work: Path, stack: contextlib.ExitStack) -> Federation:
    """A cluster with a real node (or the one FLARE_REAL_NODE_CLUSTER names): NVFlare server and
    clients as Pods from the runtime image, set up as tests/node/test_kubernetes_runtime.py does."""
    from flare_operator.builders import naming
    from flare_operator.builders.workloads import ENFORCEMENT_DIR, ENFORCEMENT_VOLUME
    from flare_operator.datagen import GeneratorConfig, write_dataset
    from flare_operator.policy.site_enforcement import APPROVED_FILE
    from tests.node.test_kubernetes_runtime import REAL_NODE, relayed_admin
    from tests.support.images import project_images

    images = project_images()  # `make images`; FLARE_IMAGES_JSON names a built set
    attach = os.environ.get("FLARE_REAL_NODE_CLUSTER")
    if attach:  # a cluster already up (e.g. `REAL_NODE=1 make cluster-up CLUSTER_DIR=DIR`): used, never stopped
        cp = ControlPlane(attach)
        if not cp.kubeconfig.exists():
            raise SystemExit(f"FLARE_REAL_NODE_CLUSTER={attach}: no kubeconfig there (is the cluster up?)")
        print(f"attached to the running cluster in {cp.dir}", flush=True)
    else:
        if os.geteuid() != 0:
            raise SystemExit("--runtime kubernetes starts a cluster with a real node, which needs root "
                             "(or FLARE_REAL_NODE_CLUSTER=DIR of a running one)")
        t = time.time()
        cp = ControlPlane.start(work / "cluster", "benchjob", nodes=0, real_nodes=1,
                                imports=images.archives("runtime"), timeout=900)
        stack.callback(cp.stop)
        print(f"cluster with a real node up in {time.time() - t:.0f} s", flush=True)

    # The client Pods run as uid 10001 and mount the datasets from the node (hostPath): a folder
    # every user may read (the bench's work folder is private).
    suffix = uuid.uuid4().hex[:5]
    data_root = Path("/var/tmp") / f"flareop-bench-job-data-{suffix}"
    data_root.mkdir(mode=0o755)
    stack.callback(shutil.rmtree, data_root, ignore_errors=True)
    data_root.chmod(0o755)
    data = write_dataset(GeneratorConfig(**DATA_ARGS), data_root)
    for path in data_root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    paths = [s["path"] for s in data["sites"].values()]

    # Names unique to this run: an attached cluster may hold other runs' namespaces.
    orgs = tuple(f"{org}-{suffix}" for org in ORGS)
    modeller = f"{MODELLER}-{suffix}"
    install_crds(cp)
    stack.callback(remove_namespaces, cp, *orgs, modeller)  # last, after the operator stopped
    for ns in (*orgs, modeller):
        create_org_namespace(cp, ns, ns)
    policy = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OrgPolicy", "spec": {"approvalMode": "Automatic"}}
    apply(cp, *(grant(org, ds, modeller, path=str(path)) for org, ds, path in zip(orgs, DATASETS, paths, strict=True)),
          *({**policy, "metadata": {"name": "default", "namespace": org}} for org in orgs))
    sites = [{**gateway_config(org, org), "runtime": "kubernetes", "dataRoots": [str(data_root)],
              "nodeSelector": REAL_NODE, "workspaceSize": "1Gi"} for org in orgs]
    config = {"mode": "all", "runtime": "kubernetes", "image": images.runtime_ref, "imagePullPolicy": "Never",
              "workdir": str(work / "flare"), "namespaces": [modeller], "workspaceSize": "1Gi",
              "resyncSeconds": args.resync_seconds, "heartbeatSeconds": 10, "gateways": sites}
    op = OperatorProcess(cp, work, config).start()
    stack.callback(op.stop)
    federation = naming.federation_name(modeller, COMPUTE)
    stack.callback(remove_federation, cp, modeller, orgs, federation)  # while the operator still runs
    stack.push(tail_on_error(op))

    t = time.time()
    body = compute(modeller, COMPUTE, list(zip(orgs, DATASETS, strict=True)))
    body["spec"].update(server={"cpu": "400m", "memory": "2Gi"}, client={"cpu": "700m", "memory": "2Gi"})
    apply(cp, body)
    ready = wait_phase(cp, "computespec", modeller, COMPUTE, "Ready", timeout=600)
    if ready["status"]["project"] != federation:
        raise RuntimeError(f"federation {ready['status']['project']}, expected {federation}")
    print(f"ComputeSpec Ready in {time.time() - t:.1f} s (federation {federation}; server and clients "
          f"are Pods on the real node)", flush=True)
    admin = stack.enter_context(relayed_admin(cp, modeller, federation, work / "admin-kit"))

    def in_configmap(org: str) -> dict[str, str]:
        cm = get(cp, "configmap", org, naming.enforcement_configmap_name(federation)) or {}
        text = (cm.get("data") or {}).get(APPROVED_FILE)
        return {e["uid"]: e["contentHash"] for e in json.loads(text)["approved"]} if text else {}

    def in_client_pod(org: str) -> dict[str, str]:
        """The file the client reads: the kubelet refreshes it from the ConfigMap within its sync period."""
        pod = f"{naming.client_name(federation, org)}-0"
        out = cp.kubectl("-n", org, "exec", pod, "--", "cat", f"{ENFORCEMENT_DIR}/{APPROVED_FILE}", check=False)
        if out.returncode != 0:
            return {}
        return {e["uid"]: e["contentHash"] for e in json.loads(out.stdout)["approved"]}

    def approved_everywhere(uid: str, content_hash: str) -> bool:
        return all(in_configmap(org).get(uid) == content_hash and in_client_pod(org).get(uid) == content_hash
                   for org in orgs)

    def approval_files() -> list[Path]:
        """The file each client Pod reads, as the kubelet writes it under its root directory (the real
        node runs on this machine): where the bench sees an approval arrive without asking anyone."""
        files = []
        for org in orgs:
            pod = get(cp, "pod", org, f"{naming.client_name(federation, org)}-0") or {}
            uid = pod.get("metadata", {}).get("uid")
            found = uid and sorted(cp.dir.glob(f"node*/kubelet/pods/{uid}/volumes/kubernetes.io~configmap/"
                                               f"{ENFORCEMENT_VOLUME}/{APPROVED_FILE}"))
            if not found:
                return []  # e.g. a cluster whose node runs elsewhere: n/a
            files.append(found[0])
        return files

    return Federation(cp, op, admin, federation, work / "flare", modeller, approved_everywhere, approval_files)


def remove_federation(cp: ControlPlane, modeller: str, orgs: tuple[str, ...], federation: str) -> None:
    """Delete the jobs and the ComputeSpec while the operator runs, so it removes the Pods, volumes and
    Secrets at the hub and at every site before the namespaces go."""
    cp.kubectl("-n", modeller, "delete", "federatedjobs", "--all", "--wait=false", check=False)
    cp.kubectl("-n", modeller, "delete", "computespec", COMPUTE, "--wait=false", check=False)
    owned = f"flareop.io/federation={federation}"

    def gone(ns: str) -> bool:
        out = cp.kubectl("-n", ns, "get", "pods,pvc,sts,secrets", "-l", owned, "-o", "name", check=False)
        return out.returncode == 0 and not out.stdout.strip()

    try:
        wait_for(lambda: all(gone(ns) for ns in (modeller, *orgs)), timeout=240,
                 message=f"nothing of {federation} left")
    except TimeoutError as err:
        print(f"clean-up: {err} (the namespaces are deleted anyway)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="runs of each arm, in the order a b b a a b b a ...")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--resync-seconds", type=float, default=5.0, help="the operator's resyncSeconds (default "
                        "= the operator's own default)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed direct runs first (cold imports, page cache)")
    parser.add_argument("--runtime", choices=("process", "kubernetes"), default="process",
                        help="process: NVFlare as local processes on a control plane with kwok nodes; kubernetes: "
                        "as Pods on a real node (root, `make images`; FLARE_REAL_NODE_CLUSTER=DIR attaches to a "
                        "running cluster, FLARE_IMAGES_JSON names built images)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    load = os.getloadavg()[:2]
    print(f"load average 1/5 min: {load[0]:.2f}/{load[1]:.2f} on {os.cpu_count()} cores", flush=True)

    work = Path(tempfile.mkdtemp(prefix="flareop-bench-job-"))
    bench = None
    try:
        with contextlib.ExitStack() as stack:
            setup = kubernetes_federation if args.runtime == "kubernetes" else process_federation
            fed = setup(args, work, stack)
            cp, m = fed.cp, fed.modeller

            # The approved content arm (b) runs: a FederatedJob with the same spec, held suspended.
            apply(cp, job_object("direct", args.rounds, args.local_steps, suspend=True, namespace=m))
            held = wait_phase(cp, "federatedjob", m, "direct", "Suspended", timeout=120)
            approved = {"uid": held["metadata"]["uid"], "contentHash": held["status"]["contentHash"], "name": "direct"}
            t = time.time()
            wait_for(lambda: fed.approved_everywhere(approved["uid"], approved["contentHash"]),
                     timeout=60 if args.runtime == "process" else 180, interval=0.2 if args.runtime == "process" else 1,
                     message="both sites allow the held job")
            if args.runtime == "kubernetes":
                print(f"the held job's approval is in both client Pods' files {time.time() - t:.1f} s after "
                      "it was Suspended", flush=True)
            compute_obj = get(cp, "computespec", m, COMPUTE)

            bench = Bench(cp, fed.flare, fed.federation, fed.admin, fed.op.proc.pid, args, modeller=m,
                          op_log=fed.op.log_path if args.runtime == "kubernetes" else None,
                          approval_files=fed.approval_files)
            stack.callback(bench.close)
            for i in range(args.warmup):
                r = bench.direct_run(f"warmup{i}", approved, compute_obj)
                print(f"warm-up (direct) done in {r['done']:.1f} s", flush=True)
            rows = []
            for i in range(args.repeats):
                for arm in ("ab" if i % 2 == 0 else "ba"):  # a b b a a b ...: a linear drift hits both arms alike
                    if arm == "a":
                        r = bench.operator_run(f"overhead-{i}")
                        if r["content_hash"] != approved["contentHash"]:
                            raise RuntimeError("arm (a) and the held job differ in content: the comparison would be "
                                               "unfair")
                    else:
                        r = bench.direct_run(f"direct-{i}", approved, compute_obj)
                    rows.append(r)
                    print(f"({arm}) {r['name']}: {r['done']:.1f} s", flush=True)
            report(rows, args, load)
        return 0
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
