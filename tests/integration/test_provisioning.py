"""NVFlare provisioning with a kept CA: real certificates, nothing re-keyed needlessly."""

import io
import json
import tarfile

import pytest
from cryptography import x509

from flare_operator.builders.federation import ADMIN_IDENTITY, FederationPlan
from flare_operator.nvflare.provisioning import provision

pytestmark = pytest.mark.integration


def _files(kit: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(kit), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_adding_a_site_keeps_the_ca_and_every_existing_identity():
    plan = FederationPlan("modeller-esm2-1234abcd", "localhost", 18002, 18003, (("org-a", "org-a"),))
    first = provision(plan)
    again = provision(plan, first.ca_state)
    assert again.kits == first.kits, "re-provisioning the same plan changes nothing (operator restarts)"

    grown = provision(plan.with_clients({"org-a": "org-a", "org-b": "org-b"}), first.ca_state)
    for name in ("localhost", "org-a", ADMIN_IDENTITY):
        assert grown.kits[name] == first.kits[name], f"{name} was re-keyed"
    org_b = _files(grown.kits["org-b"])
    root = x509.load_pem_x509_certificate(org_b["startup/rootCA.pem"])
    cert = x509.load_pem_x509_certificate(org_b["startup/client.crt"])
    assert root == x509.load_pem_x509_certificate(_files(first.kits["org-a"])["startup/rootCA.pem"])
    assert cert.issuer == root.subject
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "org-b"
    fed_client = json.loads(org_b["startup/fed_client.json"])
    assert fed_client["servers"][0]["service"]["target"] == "localhost:18002"
    assert fed_client["require_signed_jobs"] is True


def test_each_federation_has_its_own_root_ca():
    one = provision(FederationPlan("fed-one", "localhost", 18002, 18003, (("org-a", "org-a"),)))
    two = provision(FederationPlan("fed-two", "localhost", 18004, 18005, (("org-a", "org-a"),)))
    root = [x509.load_pem_x509_certificate(_files(p.kits["org-a"])["startup/rootCA.pem"]) for p in (one, two)]
    assert root[0].public_key() != root[1].public_key()


def test_a_site_on_another_cluster_dials_the_external_endpoint_named_in_the_servers_certificate():
    svc = "fed-server.modeller.svc"
    plan = FederationPlan("fed", svc, 8002, 8003, (("org-a", "org-a"),),
                          extra_host_names=(f"{svc}.cluster.local", "localhost", "flare.hub.example.org"))
    first = provision(plan)
    grown = plan.with_clients({"org-a": "org-a", "org-b": "org-b"}, {"org-b": ("flare.hub.example.org", 30802)})
    kits = provision(grown, first.ca_state).kits
    target = {org: json.loads(_files(kits[org])["startup/fed_client.json"])["servers"][0]["service"]["target"]
              for org in ("org-a", "org-b")}
    assert target == {"org-a": f"{svc}:8002", "org-b": "flare.hub.example.org:30802"}
    assert kits["org-a"] == first.kits["org-a"] and kits[svc] == first.kits[svc], "nobody else re-keyed"
    cert = x509.load_pem_x509_certificate(_files(kits[svc])["startup/server.crt"])
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {svc, f"{svc}.cluster.local", "localhost", "flare.hub.example.org"} <= set(names)
    # a client that no longer takes part drops its endpoint too
    assert grown.with_clients({"org-a": "org-a"}, {"org-b": ("x", 1)}).connect_to == ()
