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

    .venv/bin/python bench/job_overhead.py [--repeats 4] [--rounds 3] [--local-steps 5] [--resync-seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
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
from flare_operator.builders.requests import datasets_by_org  # noqa: E402
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
    wait_phase,
)
from tests.support.controlplane import ControlPlane  # noqa: E402
from tests.support.kube_fixtures import wait_for  # noqa: E402

ORGS = ("org-a", "org-b")
MODELLER = "modeller"
COMPUTE = "esm2"
TICK = 0.25  # seconds between the bench's own looks (status / metrics.json); job meta every 2nd tick
FAILED = {"Failed", "TimedOut", "Aborted", "Rejected"}


def job_object(name: str, rounds: int, local_steps: int, *, suspend: bool = False) -> dict:
    spec = {"computeSpecRef": {"name": COMPUTE}, "rounds": rounds,
            "parameters": {**BASE_PARAMS, "localSteps": local_steps}, "activeDeadlineSeconds": 900}
    if suspend:
        spec["suspend"] = True
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FederatedJob",
            "metadata": {"name": name, "namespace": MODELLER}, "spec": spec}


class Bench:
    def __init__(self, cp: ControlPlane, flare: Path, federation: str, admin, op_pid: int, args):
        from kubernetes import client

        self.cp, self.args, self.admin, self.op_pid = cp, args, admin, op_pid
        self.cp_pids = cp.running_pids()
        self.server_root = flare / federation  # <workdir>/<federation>/<server participant>/<job id>/...
        self.api = cp.api_client()
        self.custom = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()

    # --- what both arms observe, the same way ------------------------------------------------

    def _round0_done(self, job_id: str) -> bool:
        for path in self.server_root.glob(f"*/{job_id}/app_server/results/metrics.json"):
            try:
                return json.loads(path.read_text()).get("last_completed_round") is not None
            except (OSError, ValueError):
                return False  # being rewritten
        return False

    def audit(self, job_id: str, action: str) -> list[float]:
        """When the server's audit log records `action` on the job (the operator's own FLARE API calls)."""
        from datetime import datetime

        times = []
        for path in self.server_root.glob("*/audit.log"):
            for line in path.read_text(errors="replace").splitlines():
                if f"[A:{action} {job_id}" in line:
                    stamp = line.split("[T:", 1)[1].split("]", 1)[0]
                    times.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp())
        return sorted(times)

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (the operator process itself, the control plane's processes):
        their own threads, not the NVFlare participants the operator started."""
        def used(pid: int) -> float:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return 0.0
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        return used(self.op_pid), sum(used(p) for p in self.cp_pids)

    class _Watch:
        """Round 0 recorded in the server's metrics.json, and NVFlare's FINISHED state (0.5 s poll)."""

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
            if self.round0 is None and self.bench._round0_done(job_id):
                self.round0 = now - self.t0
            if self.finished is None and self.ticks % 2 == 0:
                self.state = str(self.bench.admin.job_meta(job_id).get("status", ""))
                if self.state.startswith("FINISHED"):
                    self.finished = now - self.t0

    # --- (a) through the operator -------------------------------------------------------------

    def operator_run(self, name: str, timeout: float = 900) -> dict:
        import threading

        from kubernetes import watch as kwatch

        body = job_object(name, self.args.rounds, self.args.local_steps)
        seen: dict[str, float] = {}  # first time the watch saw: "job_id", "round>=1", "Succeeded"
        last: dict = {}

        def follow() -> None:  # a watch, not polling: observing costs the API server nothing per tick
            w = kwatch.Watch()
            for event in w.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION, MODELLER,
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

        load, (op0, cp0) = os.getloadavg()[0], self.cpu()
        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        time.sleep(0.5)  # the watch is open before the job exists
        t0 = time.time()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, MODELLER, "federatedjobs", body)
        watch = self._Watch(self, t0)
        while "end" not in seen:
            if time.time() - t0 > timeout or not thread.is_alive():
                raise TimeoutError(f"{name}: {json.dumps(last.get('status'))[-2000:]}")
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
        self._check_not_refused(meta)
        done = seen["end"] - t0
        row = {"arm": "a", "name": name, "job_id": job_id, "content_hash": status.get("contentHash"),
               "to_server_accepted": float(meta["submit_time"]) - t0, "submitted_seen": seen["job_id"] - t0,
               "first_round": seen.get("round>=1", seen["end"]) - t0, "first_round_server": watch.round0,
               "flare_finished": watch.finished, "done": done, "operator_cpu": op1 - op0,
               "controlplane_cpu": cp1 - cp0, "load": load,
               # the operator's pass that saw FINISHED downloads first, then asks for the sites' logs
               "detected": downloads[0] - t0 if downloads else None, "logs_asked": len(logs),
               "logs_done": logs[-1] - t0 if logs else None,
               "val_accuracy": (status.get("globalMetrics") or {}).get("val_accuracy")}
        # Keep the operator's background work the same for every repetition: the finished job goes.
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, MODELLER, "federatedjobs", name)
        wait_for(lambda: get(self.cp, "federatedjob", MODELLER, name) is None, timeout=120,
                 message=f"{name} deleted")
        return row

    # --- (b) straight to NVFlare --------------------------------------------------------------

    def direct_run(self, tag: str, approved: dict, compute_obj: dict, timeout: float = 900) -> dict:
        """What the operator's run.py does, by hand: build with the same inputs, submit, poll, download."""
        job_spec = FederatedJobSpec.model_validate(job_object("x", self.args.rounds, self.args.local_steps)["spec"])
        compute_spec = ComputeSpecSpec.model_validate(compute_obj["spec"])
        load, (op0, cp0) = os.getloadavg()[0], self.cpu()
        t0 = time.time()
        app = load_app(compute_spec.model.id, compute_spec.model.version)
        sites = sites_for(datasets_by_org(compute_spec), client_name)
        files = build_job(app, {**job_spec.parameters, "rounds": job_spec.rounds}, sites,
                          job_name=f"{MODELLER}-{tag}"[:60],
                          privacy=privacy_from_api(job_spec.privacy.to_wire(), job_spec.rounds),
                          aggregation=aggregation_from_api(job_spec.aggregation.to_wire()),
                          metadata={"uid": approved["uid"], "contentHash": approved["contentHash"], "attempt": 1,
                                    "job": f"{MODELLER}/{approved['name']}"})
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
        self._check_not_refused(meta)
        return {"arm": "b", "name": tag, "job_id": job_id, "to_server_accepted": float(meta["submit_time"]) - t0,
                "submitted_seen": float(meta["submit_time"]) - t0, "first_round": watch.round0,
                "first_round_server": watch.round0, "flare_finished": watch.finished, "done": done,
                "operator_cpu": op1 - op0, "controlplane_cpu": cp1 - cp0, "load": load,
                "val_accuracy": ((record.get("final") or {}).get("global") or {}).get("val_accuracy")}

    @staticmethod
    def _check_not_refused(meta: dict) -> None:
        refusals = [h for h in meta.get("schedule_history") or [] if "refuses" in h or "not approved" in h]
        if refusals:
            raise RuntimeError(f"a site refused NVFlare job {meta.get('job_id')}: {refusals}")


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
    a = [r for r in rows if r["arm"] == "a"]
    b = [r for r in rows if r["arm"] == "b"]
    for r in a + b:
        r["flare_run"] = r["flare_finished"] - r["to_server_accepted"]
        r["after_finish"] = r["done"] - r["flare_finished"]
    for r in a:
        if r.get("detected") is not None:
            r["detect_wait"] = r["detected"] - r["flare_finished"]
            r["log_wait"] = (r["logs_done"] if r.get("logs_done") is not None else r["detected"]) - r["detected"]
    print("\nper run, seconds from the create (a) / from the start of the build (b):")
    print(f"{'run':<16}{'load1':>6}{'accepted':>9}{'round 0':>9}{'round>=1 seen':>14}{'NVFlare done':>13}"
          f"{'done':>8}{'op CPU':>8}{'cp CPU':>8}{'val_acc':>9}")
    for r in rows:
        acc = r.get("val_accuracy")
        print(f"{r['arm'] + ' ' + r['name']:<16}{r['load']:6.1f}{fmt(r['to_server_accepted']):>9}"
              f"{fmt(r['first_round_server']):>9}{fmt(r['first_round']):>14}{fmt(r['flare_finished']):>13}"
              f"{fmt(r['done']):>8}{r['operator_cpu']:8.2f}{r['controlplane_cpu']:8.2f}"
              f"{'—' if acc is None else f'{acc:.4f}':>9}")

    def line(label: str, key: str) -> None:
        ma, mb = median(a, key), median(b, key)
        ratio = f"{ma / mb:7.3f}" if ma is not None and mb else "      —"
        print(f"{label:<58}{fmt(ma):>10}{fmt(mb):>11}{ratio:>8}")

    print(f"\nmedians over {len(a)} + {len(b)} runs; {args.rounds} rounds x {args.local_steps} local steps, "
          f"operator resyncSeconds {args.resync_seconds:g}")
    print(f"{'':<58}{'(a) op':>10}{'(b) direct':>11}{'a/b':>8}")
    line("total: create -> Succeeded | build -> done + downloaded", "done")
    line("first round, as seen: currentRound>=1 | metrics.json", "first_round")
    line("first round in the server's metrics.json (round 0)", "first_round_server")
    line("NVFlare accepted the job (meta submit_time)", "to_server_accepted")
    line("NVFlare run: accepted -> FINISHED (0.5 s poll)", "flare_run")
    line("after FINISHED: -> Succeeded | -> downloaded", "after_finish")
    line("  of which FINISHED -> the operator's pass sees it", "detect_wait")
    line("  of which download + waiting for the sites' logs", "log_wait")
    line("operator process CPU seconds during the run", "operator_cpu")
    line("control plane (apiserver, etcd, ...) CPU seconds", "controlplane_cpu")
    ma, mb = median(a, "done"), median(b, "done")
    # The NVFlare run is the same job on the same processes in both arms: what differs is before
    # (admission, approval, build, submit) and after (detection, download). Under a noisy machine
    # the estimate below is steadier than the raw ratio; it misses only the operator's CPU use
    # while the job runs (the last line above says how much that is).
    fixed = (median(a, "to_server_accepted") - median(b, "to_server_accepted")
             + median(a, "after_finish") - median(b, "after_finish"))
    asks = [r["logs_asked"] for r in a if r.get("logs_asked") is not None]
    print(f"operator's get_job_log calls per job: {asks}")
    print(f"\nRATIO total (a)/(b) = {ma / mb:.3f}  (target <= 1.05); {ma - mb:+.1f} s per job")
    print(f"platform time before + after the NVFlare run: {fixed:+.1f} s -> (b + that)/b = {(mb + fixed) / mb:.3f}")
    print(f"load average 1 min at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="runs of each arm, in the order a b b a a b b a ...")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--resync-seconds", type=float, default=5.0, help="the operator's resyncSeconds (default "
                        "= the operator's own default)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed direct runs first (cold imports, page cache)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    load = os.getloadavg()[:2]
    print(f"load average 1/5 min: {load[0]:.2f}/{load[1]:.2f} on {os.cpu_count()} cores", flush=True)

    from flare_operator.datagen import GeneratorConfig, write_dataset
    from flare_operator.nvflare.admin import FlareAdmin

    work = Path(tempfile.mkdtemp(prefix="flareop-bench-job-"))
    data = write_dataset(GeneratorConfig(**DATA_ARGS), work / "data")
    paths = [s["path"] for s in data["sites"].values()]
    cp = ControlPlane.start(work / "cluster", "benchjob")
    op = admin = bench = None
    try:
        install_crds(cp)
        for ns in (*ORGS, MODELLER):
            create_org_namespace(cp, ns, ns)
        policy = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OrgPolicy", "spec": {"approvalMode": "Automatic"}}
        apply(cp, *(grant(org, f"scl-{org[-1]}", MODELLER, path=str(path)) for org, path in zip(ORGS, paths, strict=True)),
              *({**policy, "metadata": {"name": "default", "namespace": org}} for org in ORGS))
        config = operator_config(work, [gateway_config(org, org) for org in ORGS], namespaces=[MODELLER],
                                 resyncSeconds=args.resync_seconds, heartbeatSeconds=10)
        op = OperatorProcess(cp, work, config).start()
        t = time.time()
        apply(cp, compute(MODELLER, COMPUTE, [(org, f"scl-{org[-1]}") for org in ORGS]))
        ready = wait_phase(cp, "computespec", MODELLER, COMPUTE, "Ready", timeout=300)
        federation = ready["status"]["project"]
        print(f"ComputeSpec Ready in {time.time() - t:.1f} s (federation {federation})", flush=True)
        flare = work / "flare"
        admin = FlareAdmin(flare / federation / ADMIN_IDENTITY, timeout=10.0)

        # The approved content arm (b) runs: a FederatedJob with the same spec, held suspended.
        apply(cp, job_object("direct", args.rounds, args.local_steps, suspend=True))
        held = wait_phase(cp, "federatedjob", MODELLER, "direct", "Suspended", timeout=120)
        approved = {"uid": held["metadata"]["uid"], "contentHash": held["status"]["contentHash"], "name": "direct"}
        wait_for(lambda: all(approved_at_site(flare, federation, org).get(approved["uid"]) == approved["contentHash"]
                             for org in ORGS), timeout=60, message="both sites allow the held job")
        compute_obj = get(cp, "computespec", MODELLER, COMPUTE)

        bench = Bench(cp, flare, federation, admin, op.proc.pid, args)
        for i in range(args.warmup):
            r = bench.direct_run(f"warmup{i}", approved, compute_obj)
            print(f"warm-up (direct) done in {r['done']:.1f} s", flush=True)
        rows = []
        for i in range(args.repeats):
            for arm in ("ab" if i % 2 == 0 else "ba"):  # a b b a a b ...: a linear drift hits both arms alike
                if arm == "a":
                    r = bench.operator_run(f"overhead-{i}")
                    if r["content_hash"] != approved["contentHash"]:
                        raise RuntimeError("arm (a) and the held job differ in content: the comparison would be unfair")
                else:
                    r = bench.direct_run(f"direct-{i}", approved, compute_obj)
                rows.append(r)
                print(f"({arm}) {r['name']}: {r['done']:.1f} s", flush=True)
        report(rows, args, load)
        return 0
    except BaseException:
        if op:
            print(op.tail(80))
        raise
    finally:
        if bench:
            bench.close()
        if admin:
            admin.close()
        if op:
            op.stop()
        cp.stop()
        if args.keep:
            print(f"work folder: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
