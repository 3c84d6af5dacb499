"""Deterministic, DNS-safe names and labels of the objects a ComputeSpec creates — pure.

    federation_name("team-a", "esm2")          -> "team-a-esm2-<8 hex>"   (<= 40 chars, a DNS-1035 label)
    server_name(fed)                           -> "<fed>-server"          (<= 47: StatefulSet, Service, NetworkPolicy)
    server_host(fed, namespace)                -> "<fed>-server.<namespace>.svc" (what in-cluster clients dial)
    client_name(fed, site)                     -> "<fed>-<site>"          (<= 52: StatefulSet, NetworkPolicy)
    kit_secret_name(fed, participant)          -> "<fed>-kit-<participant>" (<= 63)

The federation name always ends with a short hash of ``namespace/name``: joining with "-" alone
is ambiguous ("a-b"/"c" and "a"/"b-c"), and long names are truncated, so the hash is what keeps
two ComputeSpecs apart. Every other name is derived from it; where a derived name would be too
long, or a participant name is not DNS-safe (NVFlare admin identities are e-mail addresses), it
is truncated and suffixed with a hash of the unsanitised input, so distinct inputs never collide.

StatefulSet names stay <= 52 characters: the controller adds the label
``controller-revision-hash=<name>-<10 chars>``, which must fit in 63.
"""

from __future__ import annotations

import hashlib
import re

from ..config import LABEL_ORG  # re-exported: every label key of our objects is importable from here

FEDERATION_NAME_MAX = 40
STATEFULSET_NAME_MAX = 52
LABEL_VALUE_MAX = 63
HASH_LEN = 8

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_FEDERATION = "flareop.io/federation"
APP_NAME = "nvflare"
PART_OF = "flare-operator"
MANAGED_BY = "flare-operator"

COMPONENT_SERVER = "server"
COMPONENT_CLIENT = "client"

_INVALID = re.compile(r"[^a-z0-9-]+")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def short_hash(text: str, length: int = HASH_LEN) -> str:
    """First ``length`` hex digits of sha256(text): stable across processes and versions."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _sanitise(text: str) -> str:
    out = _INVALID.sub("-", text.lower())
    return re.sub(r"-{2,}", "-", out).strip("-")


def _with_hash(prefix: str, key: str, max_len: int) -> str:
    """``prefix`` cut to fit, then "-" and the hash of ``key``."""
    head = prefix[: max_len - HASH_LEN - 1].rstrip("-")
    return f"{head}-{short_hash(key)}" if head else short_hash(key)


def dns_label(text: str, max_len: int = LABEL_VALUE_MAX) -> str:
    """``text`` as a DNS-1035 label of at most ``max_len`` characters (lowercase, starts with a
    letter). Returned unchanged when it already is one; otherwise sanitised, cut and suffixed
    with a hash of the original text, so two different inputs never map to the same label."""
    if len(text) <= max_len and _DNS_LABEL.match(text):
        return text
    clean = _sanitise(text)
    if not clean or not clean[0].isalpha():
        clean = f"x-{clean}".rstrip("-")
    return _with_hash(clean, text, max_len)


def federation_name(namespace: str, compute_name: str) -> str:
    """The federation (NVFlare project) of ComputeSpec ``namespace/compute_name``: at most 40
    characters, a DNS-1035 label, readable prefix ``<namespace>-<name>`` plus a hash of both."""
    if not namespace or not compute_name:
        raise ValueError("federation_name needs a namespace and a ComputeSpec name")
    prefix = _sanitise(f"{namespace}-{compute_name}")
    if not prefix or not prefix[0].isalpha():
        prefix = f"fl-{prefix}".rstrip("-")
    return _with_hash(prefix, f"{namespace}/{compute_name}", FEDERATION_NAME_MAX)


def _derived(fed: str, suffix: str, max_len: int) -> str:
    name = f"{fed}-{suffix}"
    if len(name) <= max_len and _DNS_LABEL.match(name):
        return name
    return _with_hash(f"{fed}-{_sanitise(suffix)}", name, max_len)


def server_name(fed: str) -> str:
    """NVFlare server StatefulSet, its Service (the clients' target) and NetworkPolicy."""
    return _derived(fed, "server", STATEFULSET_NAME_MAX)


def external_service_name(fed: str) -> str:
    """The Service exposing only the server's FL port outside the cluster (NodePort / LoadBalancer)."""
    return _derived(fed, "server-ext", LABEL_VALUE_MAX)


def server_host(fed: str, namespace: str) -> str:
    """DNS name of the server's Service inside the cluster (``<server>.<namespace>.svc``): the
    host clients in other namespaces dial, so the one to provision as the NVFlare server name
    (its certificate's name) when clients run on the hub's cluster."""
    return f"{server_name(fed)}.{namespace}.svc"


def client_name(fed: str, site: str) -> str:
    """A site's NVFlare client StatefulSet and NetworkPolicy (in the site's namespace)."""
    return _derived(fed, site, STATEFULSET_NAME_MAX)


def enforcement_configmap_name(fed: str) -> str:
    """ConfigMap (in a site's namespace) with the site's approved jobs of federation ``fed``,
    mounted read-only into its client (policy/site_enforcement.py)."""
    return _derived(fed, "approved-jobs", LABEL_VALUE_MAX)


def kit_secret_name(fed: str, participant: str) -> str:
    """Secret holding one participant's startup kit (server, a client, or the admin)."""
    return _derived(fed, f"kit-{participant}", LABEL_VALUE_MAX)


def standard_labels(fed: str, component: str, org: str | None = None) -> dict[str, str]:
    """The recommended app.kubernetes.io labels plus flareop.io/federation (and flareop.io/org
    when ``org`` is given), on every object the operator creates for a federation."""
    labels = {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: fed,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_FEDERATION: fed,
    }
    if org:
        labels[LABEL_ORG] = org
    return labels


def selector_labels(fed: str, component: str, org: str | None = None) -> dict[str, str]:
    """The immutable subset of ``standard_labels`` used as StatefulSet and NetworkPolicy selectors."""
    labels = {LABEL_FEDERATION: fed, LABEL_COMPONENT: component}
    if org:
        labels[LABEL_ORG] = org
    return labels
