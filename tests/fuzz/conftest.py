"""The fuzz tier: its seed in the session header, so a failing run can be replayed with FUZZ_SEED=n."""


def pytest_report_header(config):
    from tests.fuzz.test_fuzz_manifests import EXAMPLES, SEED

    return f"fuzz: FUZZ_SEED={SEED} FUZZ_EXAMPLES={EXAMPLES}"
