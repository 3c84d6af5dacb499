"""Operator configuration (Helm values / command line / environment), as typed models.

One operator binary runs in one of two modes:
- orchestrator (hub): ComputeSpec, FederatedJob, AccessRequest specs, NVFlare servers;
- gateway (site): registers its Gateway on the hub, answers its org's AccessRequests from its own
  DatasetGrants and OrgPolicy, runs its NVFlare clients.
`all` runs the orchestrator and one gateway in one process (single-cluster deployments).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .api.common import OrgName
from .api.gateway import RuntimeKind

FINALIZER = "flareop.io/finalizer"
FIELD_MANAGER = "flare-operator"
LABEL_ORG = "flareop.io/org"
DEFAULT_IMAGE = "ghcr.io/flareop/flare-runtime:0.1.0"


class OperatorMode(StrEnum):
    ORCHESTRATOR = "orchestrator"
    GATEWAY = "gateway"
    ALL = "all"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel)


class Toleration(_Config):
    key: str = ""
    operator: str = "Exists"
    value: str = ""
    effect: str = ""


class SiteSettings(_Config):
    """How one data-owner site runs its NVFlare clients (the site's Helm values)."""

    org: OrgName
    site: OrgName = Field(description="NVFlare client name prefix of this site")
    namespace: str = Field(description="Site namespace: DatasetGrants, OrgPolicy, JobApprovals, clients")
    hub_namespace: str = Field(description="This org's namespace on the hub (Gateway, AccessRequests)")
    hub_kubeconfig: Path | None = Field(None, description="Credential for the hub; None: same cluster")
    runtime: RuntimeKind = RuntimeKind.PROCESS
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpu_resource_name: str = "nvidia.com/gpu"
    storage_class: str | None = None
    workspace_size: str = "10Gi"
    # Delete: a client's workspace volume (job folders, logs) goes with its ComputeSpec; Retain: kept.
    workspace_retention: Literal["Delete", "Retain"] = "Delete"
    gpu_class: str = ""
    gpu_count: int = 0
    # The JobApproval admission webhook (records who decided; refuses unknown jobs and stale hashes),
    # served by the gateway at https://<webhook_host>:<webhook_port>. 0: no webhook.
    webhook_port: int = 0
    webhook_host: str = "127.0.0.1"
    # In a cluster (the Helm chart): "namespace/name" of the Service in front of the webhook port.
    # The webhook configurations then name that Service instead of a URL, the serving certificate
    # is for its DNS names, and the server listens on webhook_host (0.0.0.0 there).
    webhook_service: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    # Lifetime of the webhook's serving certificate; the liveness probe fails (a restart renews it)
    # once a third of it is left (runtime/tls.py).
    webhook_cert_days: float = Field(365.0, gt=0)
    data_roots: list[Path] | None = Field(
        default_factory=list,
        description="Folders a DatasetGrant's spec.dataset.path may point into (camelCase: dataRoots). "
        "A path grant is used only if its path, with symlinks resolved, is one of these folders or lies under "
        "one; any other is reported Valid=False (InvalidLocation) in the grant's status and never mounted. "
        "[] (the default): no path grants at all, PersistentVolumeClaims only — a site allows paths by naming "
        "their folders. null: paths are not confined (development only; the grant's Valid condition says so). "
        "Process runtime: roots and paths are resolved on the operator's "
        "machine (relative ones against its working directory). Kubernetes runtime: the path is a node path "
        "(hostPath), checked lexically — the operator cannot see the node's symlinks.",
    )


class S3StoreConfig(_Config):
    """An S3-compatible bucket for finished jobs' results (one prefix per consumer namespace and job).

    Credentials are read from the environment variables named here, never from the config file."""

    endpoint: str | None = Field(None, description="Endpoint URL (None: AWS's own for the region)")
    bucket: str = Field(min_length=3, max_length=63)
    region: str = "us-east-1"
    prefix: str = Field("", description="Key prefix before <namespace>/<job>/ (e.g. 'results/')")
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    create_bucket: bool = Field(False, description="Create the bucket if it does not exist")
    ca_bundle: Path | None = Field(None, description="CA bundle to verify the endpoint's TLS certificate")


class ResultsStoreConfig(_Config):
    """Where finished FederatedJobs' results go: a local directory (single machine) or an S3 bucket."""

    type: Literal["local", "s3"] = "local"
    path: Path | None = Field(None, description="type local: the directory (None: <workdir>/results)")
    s3: S3StoreConfig | None = None

    @model_validator(mode="after")
    def _s3_needs_settings(self) -> ResultsStoreConfig:
        if self.type == "s3" and self.s3 is None:
            raise ValueError("resultsStore.type s3 needs resultsStore.s3 (endpoint, bucket, ...)")
        return self


class ExternalServerConfig(_Config):
    """How NVFlare clients on other clusters reach a federation's server (kubernetes runtime): a
    Service of ``serviceType`` exposing only the FL port, and the address the sites dial. TLS is end
    to end (mutual, NVFlare's own certificates): a load balancer or proxy in front must pass TCP
    through (L4 / TLS passthrough), never terminate TLS."""

    host: str = Field(min_length=1, max_length=253, description="DNS name or IP the sites dial; it goes into "
                      "each server's certificate, so set it before federations are provisioned")
    port: int | None = Field(None, ge=1, le=65535, description="Port the sites dial; None: each federation's "
                             "NodePort (serviceType NodePort, host a node address)")
    service_type: Literal["NodePort", "LoadBalancer"] = "NodePort"
    node_port: int | None = Field(None, ge=30000, le=32767, description="A fixed NodePort (one federation "
                                  "per hub, e.g. behind a passthrough proxy); None: the API server picks one")

    @model_validator(mode="after")
    def _port_known(self) -> ExternalServerConfig:
        if self.port is None and self.service_type != "NodePort":
            raise ValueError("externalServer.port is required with serviceType LoadBalancer (the port the "
                             "load balancer listens on)")
        return self


class OperatorConfig(_Config):
    mode: OperatorMode = OperatorMode.ALL
    runtime: RuntimeKind = RuntimeKind.PROCESS
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # Container commands of the kubernetes runtime (None: NVFlare's own server_train / client_train).
    server_command: list[str] | None = None
    client_command: list[str] | None = None
    # Where the process runtime keeps workspaces, kits and logs (one folder per federation).
    workdir: Path = Path(".flare-operator")
    # The hub: namespaces with ComputeSpecs/FederatedJobs (empty: all namespaces).
    namespaces: list[str] = Field(default_factory=list)
    operator_namespace: str = "flare-system"
    storage_class: str | None = None
    workspace_size: str = "10Gi"
    # Delete: the server's workspace volume goes with its ComputeSpec; Retain: kept (for inspection).
    workspace_retention: Literal["Delete", "Retain"] = "Delete"
    # Kubernetes runtime: how the orchestrator reaches each server's admin port (the FLARE API).
    # service: the Service name in the kit (the operator runs in the cluster); port-forward: a local
    # relay through the Kubernetes API's pods/portforward (an operator outside the cluster, kubeconfig
    # only); pod-ip: a local relay straight to the server Pod's IP (the operator's machine routes to
    # the Pod network); auto: service in a Pod, port-forward elsewhere; none: no route — the hub
    # creates and scales the workloads but submits no jobs (e.g. nodes that run no containers, kwok).
    admin_route: Literal["auto", "service", "port-forward", "pod-ip", "none"] = "auto"
    # Kubernetes runtime: the endpoint for sites on other clusters (their Gateway says
    # sameClusterAsHub: false); None: every site must be on the hub's cluster.
    external_server: ExternalServerConfig | None = None
    metrics_port: int = 0  # Prometheus /metrics on metrics_host (0: off)
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a Pod, for the metrics Service
    heartbeat_seconds: float = 10.0
    # The hub flags a Gateway whose site has not reported in for this long (Connected=False).
    gateway_stale_seconds: float = Field(60.0, gt=0)
    resync_seconds: float = 5.0
    # A site re-answers a settled AccessRequest (decided for its current content, and a Compute
    # request's client reported running: status/requests.py) this often instead of every
    # resync_seconds; changes to the request or to the site's grants, policy and approvals still
    # answer it at once. Also how often an unchanged workload (server, client: StatefulSet, Service,
    # NetworkPolicy, kit Secret, ConfigMaps) is applied again, which puts right what someone changed
    # behind the operator's back; one found missing is applied at once (runtime/kubernetes.py).
    settled_resync_seconds: float = Field(60.0, gt=0)
    # Threads that carry the operator's Kubernetes calls (the client blocks; handlers await it in
    # this pool), and connections kept open per API server. asyncio's default pool has
    # min(32, CPUs + 4) threads: 6 on 2 cores, which the scale benchmark kept saturated with calls
    # waiting on the API server (docs/benchmarks.md §7).
    kube_threads: int = Field(32, ge=1, le=512)
    # Jobs on their way through NVFlare (Queued, Submitted, Running) are followed this often, so a
    # finished round or job shows without waiting for the resync.
    active_job_poll_seconds: float = Field(1.0, gt=0)
    # A site's client seen running a job's NVFlare job that then answers without it for
    # site_lost_seconds lost it (it restarted mid-job; NVFlare 2.9 would wait for it for ever): the
    # job is resubmitted from its last checkpoint. One never seen running it gets site_start_seconds
    # to start it. The sites are asked at most every site_check_seconds per job.
    site_lost_seconds: float = Field(15.0, gt=0)
    site_start_seconds: float = Field(180.0, gt=0)
    site_check_seconds: float = Field(5.0, gt=0)
    gateways: list[SiteSettings] = Field(default_factory=list)
    # Finished jobs' results (files with sizes and sha256): a local directory or an S3 bucket.
    results_store: ResultsStoreConfig = Field(default_factory=ResultsStoreConfig)

    @classmethod
    def from_file(cls, path: Path) -> OperatorConfig:
        import yaml

        data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
        return cls.model_validate(data)
