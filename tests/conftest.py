"""Test tiers: unit (pure code), schema (CRDs on a real kube-apiserver), integration (operator on a
real API server), e2e (real NVFlare federations). Control planes start only when a test asks."""

pytest_plugins = ["tests.support.kube_fixtures", "tests.support.s3"]
