"""Kopf registration: one registry per (role, API server), each with its own login and settings.

The orchestrator has one registry on the hub. A gateway has two: the site's API server (its own
DatasetGrants, OrgPolicy, JobApprovals) and the hub's, namespaced to its org's namespace there
(AccessRequests, its Gateway). Kopf runs each registry as its own `kopf.operator` task.

Reconciliation is level-based: change handlers nudge, timers converge, and every handler returns
None (Kopf would store return values in status, making function names public API).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import kopf

from ..api.access_request import ANNOTATION_KIT
from ..api.gateway import RuntimeKind
from ..api.job import FINISHED_PHASES, FederatedJobStatus, JobPhase
from ..api.kinds import GROUP, VERSION
from ..builders.requests import LABEL_FEDERATION, LABEL_REQUEST_KIND
from ..config import FINALIZER, LABEL_ORG, OperatorConfig, SiteSettings
from ..runtime.metrics import COMPUTE_PHASES, JOB_PHASES, RECONCILE_SECONDS, RECONCILES
from ..status.pods import pod_problem, statefulset_ready
from ..status.requests import answer_settled, grant_inputs, moved_by_ledger
from .compute import Federation, Hub, write_status
from .gateway import RequestAnswer, Site, heartbeat
from .job import Admission, write_job_status
from .liveness import check_gateway
from .objects import Listings, seen_change
from .run import Run, abort_if_running, expire_if_due

log = logging.getLogger(__name__)

STORAGE_PREFIX = "flareop.io"
IN_FLIGHT = frozenset({JobPhase.QUEUED.value, JobPhase.SUBMITTED.value, JobPhase.RUNNING.value})


def measured(kind: str):
    """Count and time every reconcile pass of `kind` (flareop_reconcile_*)."""

    def wrap(fn):
        @functools.wraps(fn)
        async def run(*args, **kwargs) -> None:
            started = time.perf_counter()
            try:
                await fn(*args, **kwargs)
            except Exception:
                RECONCILES.labels(kind, "error").inc()
                raise
            else:
                RECONCILES.labels(kind, "ok").inc()
            finally:
                RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)

        return run

    return wrap


def webhook_settings(settings: kopf.OperatorSettings, site: SiteSettings, workdir: Path) -> Path:
    """Serve the site's admission webhook with a fresh certificate (returned: its path)."""
    import datetime

    from ..builders.admission import service_names
    from ..runtime.tls import write_webhook_certs

    extra = service_names(site.webhook_service) if site.webhook_service else ()
    ca, cert, key = write_webhook_certs(workdir / "webhook" / site.site, site.webhook_host, *extra,
                                        validity=datetime.timedelta(days=site.webhook_cert_days))
    settings.admission.server = kopf.WebhookServer(
        addr=site.webhook_host, port=site.webhook_port, host=site.webhook_host, certfile=str(cert),
        pkeyfile=str(key), cafile=str(ca))
    # Not Kopf's managed mode: builders/admission.py scopes each site's webhook to its namespace.
    return cert


def probe_webhook_certificates(registry: kopf.OperatorRegistry, certs: list[Path]) -> None:
    """The liveness probe fails once a webhook certificate is due for renewal (runtime/tls.py
    renewal_due): in a Pod the kubelet restarts the operator, and the new one makes a new one."""
    import datetime

    from ..runtime.tls import renewal_due, validity_of

    lifetimes = {cert: validity_of(cert) for cert in certs}

    @kopf.on.probe(registry=registry, id="webhook_certificates")
    def webhook_certificates(**_) -> str:
        now = datetime.datetime.now(datetime.UTC)
        for cert, (not_before, not_after) in lifetimes.items():
            if renewal_due(not_before, not_after, now):
                raise kopf.PermanentError(f"the webhook certificate {cert} expires at {not_after.isoformat()}: "
                                          "restart the operator to renew it (in a Pod its liveness probe does)")
        return "ok"


def operator_settings(config: OperatorConfig, *, scanning: bool = True,
                      workloads: str | None = None) -> kopf.OperatorSettings:
    """scanning=False for credentials scoped to one namespace (a site's hub credential): Kopf then
    neither lists namespaces nor CRDs cluster-wide, which such a credential may not do.
    ``workloads``: the component (server, client) whose StatefulSets and Pods this operator watches —
    selected by the API server, so that no other Pod of the cluster or namespace is sent to it (Kopf
    filters handlers' labels only on its side)."""
    settings = kopf.OperatorSettings()
    if workloads:
        selector = f"app.kubernetes.io/component={workloads},{LABEL_FEDERATION}"
        settings.watching.label_selectors["apps", "v1", "statefulsets"] = selector
        settings.watching.label_selectors["v1", "pods"] = selector
    settings.scanning.disabled = not scanning
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING  # our own Events say what happened; Kopf's only on trouble
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 90
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.queueing.error_delays = [1, 2, 5, 10, 30]
    # A deletion waits until the object's timers have exited; a timer still in its invocation (e.g.
    # the resync pass that deleted a finished job for ttlSecondsAfterFinished) is polled, by default
    # every 60 s, which held the finalizer that long. Our timer passes take well under a second.
    settings.background.cancellation_polling = 1.0
    return settings


def answer_watch_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    """The answer watch's Kopf settings: its own finalizer name. Kopf removes its finalizer from
    any object its registry has no handler needing it for — with the shared name it would strip
    the gateways' finalizer off every AccessRequest (and a request deleted then would never be
    released at its site). Nothing of this registry needs a finalizer, so none is ever added."""
    settings = operator_settings(config)
    settings.persistence.finalizer = f"{STORAGE_PREFIX}/answer-watch"
    return settings


def login_from(kubeconfig: Path | None):
    """A Kopf login handler for one API server (a kubeconfig file, or Kopf's defaults)."""

    def login(**kwargs) -> kopf.ConnectionInfo | None:
        if kubeconfig is None:
            return kopf.login_via_client(**kwargs)
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        token = (cfg.api_key or {}).get("authorization", "").removeprefix("Bearer ").strip() or None
        return kopf.ConnectionInfo(server=cfg.host, ca_path=cfg.ssl_ca_cert, certificate_path=cfg.cert_file,
                                   private_key_path=cfg.key_file, token=token, scheme="Bearer" if token else None,
                                   insecure=not cfg.verify_ssl)

    return login


def _in_flight(status: kopf.Status, **_) -> bool:
    """Jobs NVFlare has or is about to get: followed at activeJobPollSeconds, not only the resync."""
    return (status or {}).get("phase") in IN_FLIGHT


def _answer(request: dict) -> tuple:
    """What the orchestrator acts on in an AccessRequest's status: the decision, the hash it was
    made for, and (Compute) whether the site's client runs and what stops it."""
    status = request.get("status") or {}
    return (status.get("decision") or "Pending", status.get("decidedHash"), status.get("clientReady"),
            status.get("clientMessage"))


def _workload_state(obj: dict) -> tuple:
    """What of a workload's StatefulSet or Pod its passes read: ready, or failing."""
    if obj.get("kind") == "Pod":
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (obj.get("status") or {}).get("conditions") or [])
        return ready, pod_problem(obj)
    return (statefulset_ready(obj),)


def _kit_of(request: dict) -> str:
    return ((request.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_KIT, "")


class AnswerWatch:
    """Reconciles a FederatedJob or ComputeSpec as soon as one of its AccessRequests changes
    answer, instead of at the next resync: the last approval → submission path (issue 18).

    Watches AccessRequests in every namespace (they live in the orgs' hub namespaces, not the
    consumer namespaces the orchestrator may be limited to). Only a change it saw happen counts:
    what it finds when it starts (or re-lists) is the resume handlers' and timers' to converge, so
    1,000 standing requests are not 1,000 reconciles at startup. The nudge takes the source's lock
    and reads it fresh, like every other pass, so it cannot submit a job twice."""

    def __init__(self, hub: Hub, sources: dict[str, tuple[str, Callable[..., Awaitable[None]]]]):
        self.hub = hub
        self.sources = sources  # request kind → (its source's kind, that kind's reconcile)
        self.seen: dict[str, tuple] = {}
        self.nudges = 0

    async def event(self, event: dict, **_) -> None:
        request = seen_change(self.seen, event, _answer)
        if request is None:
            return
        source = (request.get("spec") or {}).get("source") or {}
        kind, reconcile = self.sources.get(source.get("kind", ""), (None, None))
        namespaces = self.hub.config.namespaces
        if reconcile is None or (namespaces and source.get("namespace") not in namespaces):
            return
        log.debug("%s %s/%s: %s answered %s; reconciling now", kind, source["namespace"], source.get("name"),
                  request["metadata"]["namespace"], _answer(request)[0])
        self.nudges += 1
        # The pass reads the object itself (and does nothing if it is gone, or is a later object of that
        # name than the request's source): no read here, and none at all when a pass already waits.
        await reconcile(body={"metadata": {"namespace": source["namespace"], "name": source.get("name", ""),
                                           "uid": source.get("uid")}})


def _same_live(fresh: dict | None, body: dict) -> bool:
    """The object a pass was started for, as just read: still there, not being deleted, the same
    uid (not a later object of that name)."""
    return (fresh is not None and not fresh["metadata"].get("deletionTimestamp")
            and fresh["metadata"].get("uid") == body["metadata"].get("uid"))


def orchestrator_registry(hub: Hub, kubeconfig: Path | None) -> tuple[kopf.OperatorRegistry, kopf.OperatorRegistry]:
    """(the orchestrator's registry, in its consumer namespaces or cluster-wide; the answer
    watch's, always cluster-wide: AccessRequests live in the orgs' namespaces — run it with
    `answer_watch_settings`). The function keeps its name: Kopf's handler ids (in the objects'
    progress annotations) are its inner functions' qualified names."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login_from(kubeconfig))
    resource = (GROUP, VERSION, "computespecs")

    @measured("ComputeSpec")
    async def reconcile(body: kopf.Body, **_) -> None:
        async with hub.passes.turn(body["metadata"]["uid"]) as mine:
            if not mine:
                return  # a pass already waits: it reads the object fresh
            fresh = await hub.k("get", "ComputeSpec", body["metadata"]["namespace"], body["metadata"]["name"])
            if not _same_live(fresh, body):
                return
            before = (fresh.get("status") or {}).get("phase")
            status = await Federation(hub, fresh).reconcile()
            await write_status(hub, fresh, status)
            COMPUTE_PHASES.observe(fresh["metadata"]["uid"], status.phase)
            changed = status.phase != before
        if changed:
            await jobs_of_compute_changed(fresh)

    async def jobs_of_compute_changed(compute: dict) -> None:
        """A ComputeSpec changed phase (became Ready, or stopped being Ready, or got its first status):
        reconcile the FederatedJobs that run on it now, instead of at their next resync — a job whose
        approvals came first waits for its federation's Ready (bench-scale: one resync at 2 orgs), and
        one applied before its ComputeSpec existed (an apply of a whole folder) waits for it to exist."""
        meta = compute["metadata"]
        listed = await hub.k("list", "FederatedJob", meta["namespace"])
        await asyncio.gather(*(
            reconcile_job(body={"metadata": {k: j["metadata"][k] for k in ("namespace", "name", "uid")}})
            for j in listed if ((j.get("spec") or {}).get("computeSpecRef") or {}).get("name") == meta["name"]))

    kopf.on.resume(*resource, registry=registry)(reconcile)
    kopf.on.create(*resource, registry=registry)(reconcile)
    kopf.on.update(*resource, registry=registry, field="spec")(reconcile)
    kopf.timer(*resource, registry=registry, interval=hub.config.resync_seconds, initial_delay=1)(reconcile)

    if hub.config.runtime == "kubernetes":
        # The servers' StatefulSets and Pods: kept for the passes (no reads), and a server that turns
        # ready, or failing, or back, reconciles its ComputeSpec (the StatefulSet's owner) at once.
        servers_seen: dict[str, tuple] = {}

        async def server_changed(event: dict, **_) -> None:
            hub.runtime.observe(event)
            obj = seen_change(servers_seen, event, _workload_state)
            owner = next((o for o in ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
                          if o.get("kind") == "ComputeSpec"), None)
            if obj is not None and owner is not None:
                await reconcile(body={"metadata": {"namespace": obj["metadata"]["namespace"], "name": owner["name"],
                                                   "uid": owner["uid"]}})

        server_labels = {"app.kubernetes.io/component": "server", LABEL_FEDERATION: kopf.PRESENT}
        kopf.on.event("apps", "v1", "statefulsets", registry=registry, labels=server_labels)(server_changed)
        kopf.on.event("v1", "pods", registry=registry, labels=server_labels)(server_changed)

    @kopf.on.delete(*resource, registry=registry)
    async def compute_deleted(body: kopf.Body, retry: int, **_) -> None:
        async with hub.lock(body["metadata"]["uid"]):
            released = await Federation(hub, dict(body)).delete()
            COMPUTE_PHASES.observe(body["metadata"]["uid"], None)
        if not released and retry < 60:
            raise kopf.TemporaryError("waiting for the sites to release their AccessRequests", delay=2)

    jobs = (GROUP, VERSION, "federatedjobs")

    @measured("FederatedJob")
    async def reconcile_job(body: kopf.Body, **_) -> None:
        async with hub.passes.turn(body["metadata"]["uid"]) as mine:
            if not mine:
                return  # a full pass already waits: it reads the job fresh
            fresh = await hub.k("get", "FederatedJob", body["metadata"]["namespace"], body["metadata"]["name"])
            if not _same_live(fresh, body):
                return
            previous = FederatedJobStatus.model_validate(FederatedJobStatus.own_fields(fresh.get("status")))
            admission = Admission(hub, fresh)
            JOB_PHASES.observe(fresh["metadata"]["uid"], previous.phase)
            if previous.phase in FINISHED_PHASES:
                await admission.record_outcome(previous)
                await expire_if_due(hub, fresh, previous)
                return
            status = await admission.reconcile()
            if admission.compute is not None:
                status = await Run(hub, fresh, status, admission.compute).step()
            await write_job_status(hub, fresh, status)
            JOB_PHASES.observe(fresh["metadata"]["uid"], status.phase)
            if status.phase in FINISHED_PHASES:
                await admission.record_outcome(status)

    kopf.on.resume(*jobs, registry=registry)(reconcile_job)
    kopf.on.create(*jobs, registry=registry)(reconcile_job)
    kopf.on.update(*jobs, registry=registry, field="spec")(reconcile_job)
    kopf.timer(*jobs, registry=registry, interval=hub.config.resync_seconds, initial_delay=1)(reconcile_job)

    @measured("FederatedJob")
    async def follow_in_flight(body: kopf.Body, **_) -> None:
        """Between full passes: only the NVFlare side (submit, progress, finish) of a job whose
        admission a full pass already settled — no AccessRequests written, few API calls."""
        uid = body["metadata"]["uid"]
        async with hub.passes.turn(f"follow/{uid}") as mine:
            if not mine:
                return  # a follow already waits
            async with hub.lock(uid):
                fresh = await hub.k("get", "FederatedJob", body["metadata"]["namespace"], body["metadata"]["name"])
                if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                    return
                previous = FederatedJobStatus.model_validate(FederatedJobStatus.own_fields(fresh.get("status")))
                if previous.phase not in IN_FLIGHT or (fresh["spec"].get("suspend") and not previous.nvflare_job_id):
                    return  # the full pass decides (suspend before submission, anything else)
                compute = await hub.k("get", "ComputeSpec", fresh["metadata"]["namespace"],
                                      fresh["spec"]["computeSpecRef"]["name"])
                if compute is None:
                    return
                status = await Run(hub, fresh, previous, compute).step()
                await write_job_status(hub, fresh, status)
                JOB_PHASES.observe(fresh["metadata"]["uid"], status.phase)
                if status.phase in FINISHED_PHASES:
                    await Admission(hub, fresh).record_outcome(status)

    kopf.timer(*jobs, registry=registry, interval=hub.config.active_job_poll_seconds, when=_in_flight,
               initial_delay=hub.config.active_job_poll_seconds)(follow_in_flight)

    @kopf.on.delete(*jobs, registry=registry)
    async def job_deleted(body: kopf.Body, **_) -> None:
        async with hub.lock(body["metadata"]["uid"]):
            await abort_if_running(hub, dict(body))
            status = FederatedJobStatus.model_validate(FederatedJobStatus.own_fields(body.get("status")))
            admission = Admission(hub, dict(body))
            if status.submitted_at is not None and status.phase not in FINISHED_PHASES:
                # Deleted mid-run: the sites turn what it reserved into spent epsilon before letting go.
                await admission.record_outcome(status.model_copy(update={"phase": JobPhase.ABORTED}))
            await admission.delete()
            JOB_PHASES.observe(body["metadata"]["uid"], None)

    gateways = (GROUP, VERSION, "gateways")
    # A Gateway's status moves at most once per heartbeat, and a silent site is flagged after
    # gatewayStaleSeconds (60): a pass per heartbeat is enough (100 orgs: 10 passes/s at a 10 s heartbeat,
    # 20 at the 5 s resync). A new Gateway is checked 1 s after it appears (initial_delay).
    gateway_interval = max(hub.config.resync_seconds, hub.config.heartbeat_seconds, 5.0)

    @measured("Gateway")
    async def gateway_liveness(body: kopf.Body, **_) -> None:
        """Flag a silent site (Connected=False) and a Gateway that counts for no org (OrgVerified=False)."""
        await check_gateway(hub, dict(body))

    kopf.timer(*gateways, registry=registry, interval=gateway_interval, initial_delay=1)(gateway_liveness)

    @kopf.on.probe(registry=registry, id="compute_specs")
    def probe(**_) -> str:
        return "ok"

    @kopf.on.startup(registry=registry)
    async def start_catalogs(memo: kopf.Memo, **_) -> None:
        from .catalog import catalog_loop

        memo["catalogs"] = asyncio.create_task(catalog_loop(hub), name="modellers' catalogs")

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_) -> None:
        task = memo.get("catalogs")
        if task:
            task.cancel()
        await hub.runtime.close()

    answers = kopf.OperatorRegistry()
    kopf.on.login(registry=answers)(login_from(kubeconfig))
    watch = AnswerWatch(hub, {"Job": ("FederatedJob", reconcile_job), "Compute": ("ComputeSpec", reconcile)})
    # An event handler stores nothing on the object (no finalizer, no annotations): the requests
    # stay the orchestrator's and the gateways' objects, unchanged by this watch.
    kopf.on.event(GROUP, VERSION, "accessrequests", registry=answers,
                  labels={LABEL_REQUEST_KIND: kopf.PRESENT})(watch.event)
    # Where each org's seat is (compute.py org_hub_namespaces): watched cluster-wide, like the answers.
    seats = SeatWatch(hub.listings)
    kopf.on.event(GROUP, VERSION, "gateways", registry=answers)(seats.watching("Gateway", _gateway_seat))
    kopf.on.event("v1", "namespaces", registry=answers)(seats.watching("Namespace", _namespace_seat))
    return registry, answers


def _gateway_seat(obj: dict) -> tuple:
    spec = obj.get("spec") or {}
    return spec.get("org"), spec.get("sameClusterAsHub")


def _namespace_seat(obj: dict) -> str | None:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_ORG)


class SeatWatch:
    """Marks the hub's Gateway or Namespace list changed when an event can move an org's seat: an
    object added or deleted, a Gateway's org (or sameClusterAsHub), a namespace's org label. A
    heartbeat (a Gateway status write, every few seconds per site) moves no seat and lists nothing."""

    def __init__(self, listings: Listings):
        self.listings = listings
        self.seen: dict[str, Any] = {}  # uid -> the seat fields last seen

    def watching(self, kind: str, seat: Callable[[dict], Any]) -> Callable[..., Awaitable[None]]:
        async def on_event(event: dict, **_) -> None:
            obj = event.get("object") or {}
            uid = (obj.get("metadata") or {}).get("uid")
            if not uid:
                return
            if event.get("type") == "DELETED":
                self.seen.pop(uid, None)
                self.listings.changed(kind)
                return
            now = seat(obj)
            if uid not in self.seen or self.seen[uid] != now:
                self.seen[uid] = now
                self.listings.changed(kind)

        return on_event


def gateway_registries(site: Site, site_kubeconfig: Path | None) -> tuple[kopf.OperatorRegistry, kopf.OperatorRegistry]:
    """(hub registry: AccessRequests in the org's hub namespace, site registry: the owner's objects)."""
    hub_registry = kopf.OperatorRegistry()
    kopf.on.login(registry=hub_registry)(login_from(site.settings.hub_kubeconfig or site_kubeconfig))
    requests = (GROUP, VERSION, "accessrequests")

    @measured("AccessRequest")
    async def answer(body: kopf.Body, **_) -> None:
        async with site.passes.turn(body["metadata"]["uid"]) as mine:
            if not mine:
                return  # an answer already waits: it reads the request fresh
            fresh = await site.hub("get", "AccessRequest", body["metadata"]["namespace"], body["metadata"]["name"])
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            await RequestAnswer(site, fresh).reconcile()
            site.answered[fresh["metadata"]["uid"]] = time.monotonic()
            labels = fresh["metadata"].get("labels") or {}
            if labels.get(LABEL_REQUEST_KIND) == "Compute" and labels.get(LABEL_FEDERATION):
                site.compute_requests[labels[LABEL_FEDERATION]] = {
                    "metadata": {k: fresh["metadata"][k] for k in ("namespace", "name", "uid")}}

    kopf.on.resume(*requests, registry=hub_registry)(answer)
    kopf.on.create(*requests, registry=hub_registry)(answer)
    kopf.on.update(*requests, registry=hub_registry, field="spec")(answer)

    async def resync(body: kopf.Body, **_) -> None:
        """The timer: a settled answer (status/requests.py) only every settledResyncSeconds."""
        last = site.answered.get(body["metadata"]["uid"])
        settled = answer_settled(body, client_events=site.settings.runtime == RuntimeKind.KUBERNETES)
        if last is not None and settled and time.monotonic() - last < site.config.settled_resync_seconds:
            return
        await answer(body=body)

    kopf.timer(*requests, registry=hub_registry, interval=site.config.resync_seconds, initial_delay=1)(resync)

    @kopf.on.event(*requests, registry=hub_registry)
    async def kit_written(event: dict, **_) -> None:
        """The hub wrote this request's client kit (a new annotation): answer now, so the client
        starts without waiting for the resync. The first event of each request (a listing, at
        start) only records what it carries; its resume handler answers it."""
        obj = seen_change(site.kits_seen, event, _kit_of)
        if obj is not None and _kit_of(obj):
            await answer(body=obj)

    @kopf.on.delete(*requests, registry=hub_registry)
    async def request_deleted(body: kopf.Body, **_) -> None:
        async with site.lock(body["metadata"]["uid"]):
            await RequestAnswer(site, dict(body)).release()
        site.answered.pop(body["metadata"]["uid"], None)
        site.kits.pop(body["metadata"]["uid"], None)
        federation = (body["metadata"].get("labels") or {}).get(LABEL_FEDERATION)
        if (site.compute_requests.get(federation) or {}).get("metadata", {}).get("uid") == body["metadata"]["uid"]:
            del site.compute_requests[federation]

    @kopf.on.startup(registry=hub_registry)
    async def start_heartbeat(memo: kopf.Memo, **_) -> None:
        memo["heartbeat"] = asyncio.create_task(_heartbeat_loop(site), name=f"heartbeat {site.settings.site}")

    @kopf.on.cleanup(registry=hub_registry)
    async def stop_heartbeat(memo: kopf.Memo, **_) -> None:
        task = memo.get("heartbeat")
        if task:
            task.cancel()
        await site.runtime.close()

    site_registry = kopf.OperatorRegistry()
    kopf.on.login(registry=site_registry)(login_from(site_kubeconfig))

    # A change to the owner's objects nudges every request at once instead of waiting for the timer
    # (concurrently: each answer holds its own request's turn, and one already waiting absorbs it).
    async def inputs_changed(event: dict, **_) -> None:
        obj = event.get("object") or {}
        # The answers below read this kind anew (for grants, also the grant checks: GrantWatch).
        site.listings.changed(obj.get("kind", ""))
        requests = [r for r in await site.hub("list", "AccessRequest", site.settings.hub_namespace)
                    if not r["metadata"].get("deletionTimestamp")]
        if obj.get("kind") == "DatasetGrant" and event.get("type") != "DELETED":
            uid, inputs = obj["metadata"].get("uid"), grant_inputs(obj)
            if site.grant_inputs.get(uid) == inputs:
                # Only the ledger moved (a job reserved, spent or released epsilon): re-answer only the
                # requests a ledger can change, not every request of the site (status/requests.py).
                requests = [r for r in requests if moved_by_ledger(r, obj)]
            site.grant_inputs[uid] = inputs
        for request, outcome in zip(requests, await asyncio.gather(*(answer(body=r) for r in requests),
                                                                   return_exceptions=True), strict=True):
            if isinstance(outcome, Exception):  # the request's own handlers and timer answer it again
                log.info("answering %s after a change at %s: %s", request["metadata"]["name"], site.settings.site,
                         outcome)

    for plural in ("datasetgrants", "orgpolicies", "jobapprovals"):
        kopf.on.event(GROUP, VERSION, plural, registry=site_registry)(inputs_changed)

    if site.settings.runtime == RuntimeKind.KUBERNETES:
        # The site's clients (StatefulSet ready, Pod ready or failing) answer their Compute requests
        # at once: waiting for a client to start needs no resync (status/requests.py answer_settled).
        async def client_changed(event: dict, **_) -> None:
            site.runtime.observe(event)  # the passes read the client's state from here, not the API
            obj = seen_change(site.clients_seen, event, _workload_state)
            if obj is None:
                return
            federation = obj["metadata"]["labels"][LABEL_FEDERATION]
            known = site.compute_requests.get(federation)  # the request a pass answered (the pass reads it)
            requests = [known] if known else await site.hub(
                "list", "AccessRequest", site.settings.hub_namespace,
                labels={LABEL_FEDERATION: federation, LABEL_REQUEST_KIND: "Compute"})
            await asyncio.gather(*(answer(body=r) for r in requests if not r["metadata"].get("deletionTimestamp")))

        client_labels = {"app.kubernetes.io/component": "client", LABEL_FEDERATION: kopf.PRESENT}
        kopf.on.event("apps", "v1", "statefulsets", registry=site_registry, labels=client_labels)(client_changed)
        kopf.on.event("v1", "pods", registry=site_registry, labels=client_labels)(client_changed)

    # Each DatasetGrant's Valid/Ready conditions (handlers/grants.py): a loop per site, woken by any
    # grant event — not a Kopf timer, which would put the operator's finalizer on the owner's grants.
    from .grants import GrantWatch

    grant_watch = GrantWatch(site)

    @kopf.on.event(GROUP, VERSION, "datasetgrants", registry=site_registry)
    async def grant_changed(**_) -> None:
        grant_watch.nudge()

    @kopf.on.startup(registry=site_registry)
    async def start_grant_checks(memo: kopf.Memo, **_) -> None:
        memo["grant_checks"] = asyncio.create_task(grant_watch.run(), name=f"grant checks {site.settings.site}")

    @kopf.on.cleanup(registry=site_registry)
    async def stop_grant_checks(memo: kopf.Memo, **_) -> None:
        task = memo.get("grant_checks")
        if task:
            task.cancel()

    if site.settings.webhook_port:
        from .admission import register_admission

        register_admission(site_registry, site)

    @kopf.on.probe(registry=site_registry, id="site")
    def probe(**_) -> str:
        return "ok"

    return hub_registry, site_registry


async def _heartbeat_loop(site: Site) -> None:
    while True:
        try:
            await heartbeat(site)
        except Exception:  # noqa: BLE001 - keep beating; the hub may be briefly unreachable
            log.warning("heartbeat of %s failed", site.settings.site, exc_info=True)
        await asyncio.sleep(site.config.heartbeat_seconds)
