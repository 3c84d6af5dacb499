"""The site's JobApproval webhook as the API server reaches it: by URL (the operator outside the
cluster) or through a Service (the Helm chart), with a serving certificate for those names."""

from __future__ import annotations

import base64

from cryptography import x509

from flare_operator.builders.admission import MUTATE_ID, VALIDATE_ID, service_names, webhook_configurations
from flare_operator.runtime.tls import write_webhook_certs


def client_configs(manifests: list[dict]) -> dict[str, dict]:
    return {m["kind"]: m["webhooks"][0]["clientConfig"] for m in manifests}


def test_outside_the_cluster_the_webhooks_are_called_by_url():
    configs = client_configs(webhook_configurations("org-b", "org-b", "https://127.0.0.1:9443/", b"CA"))
    assert configs["MutatingWebhookConfiguration"] == {"url": f"https://127.0.0.1:9443/{MUTATE_ID}",
                                                       "caBundle": base64.b64encode(b"CA").decode()}
    assert configs["ValidatingWebhookConfiguration"]["url"] == f"https://127.0.0.1:9443/{VALIDATE_ID}"


def test_in_the_cluster_they_name_the_service_and_its_port():
    manifests = webhook_configurations("org-b", "org-b", "https://0.0.0.0:9443", b"CA",
                                       service="flare-system/flare-webhook", port=9443)
    configs = client_configs(manifests)
    assert configs["MutatingWebhookConfiguration"]["service"] == {
        "namespace": "flare-system", "name": "flare-webhook", "port": 9443, "path": f"/{MUTATE_ID}"}
    assert configs["ValidatingWebhookConfiguration"]["service"]["path"] == f"/{VALIDATE_ID}"
    assert all("url" not in c for c in configs.values())
    # Still scoped to the site's namespace only.
    assert {m["webhooks"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for m in manifests} == {"org-b"}


def test_the_serving_certificate_covers_the_bind_address_and_the_service_names(tmp_path):
    ca, cert, _ = write_webhook_certs(tmp_path, "0.0.0.0", *service_names("flare-system/flare-webhook"))
    served = x509.load_pem_x509_certificate(cert.read_bytes())
    sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["flare-webhook.flare-system.svc",
                                                       "flare-webhook.flare-system.svc.cluster.local"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["0.0.0.0"]
    assert served.issuer == x509.load_pem_x509_certificate(ca.read_bytes()).subject


def test_the_certificate_lives_as_long_as_configured_and_is_due_with_a_third_left(tmp_path):
    import datetime

    from flare_operator.runtime.tls import renewal_due, validity_of

    _, cert, _ = write_webhook_certs(tmp_path, "127.0.0.1", validity=datetime.timedelta(days=90))
    not_before, not_after = validity_of(cert)
    assert datetime.timedelta(days=90) <= not_after - not_before <= datetime.timedelta(days=90, minutes=6)
    assert not renewal_due(not_before, not_after, not_before + datetime.timedelta(days=59))
    assert renewal_due(not_before, not_after, not_before + datetime.timedelta(days=61))
    assert renewal_due(not_before, not_after, not_after + datetime.timedelta(seconds=1))  # expired: due
