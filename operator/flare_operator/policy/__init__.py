"""Pure policy: (request, grants, policy, approvals) -> decisions with reasons a person can act on.

- `content_hash`: the sha256 of the job + compute content a decision binds to.
- `evaluate`: one org's decision on one AccessRequest, every rule reported (rule names are public API).
- `ledger`: the privacy-budget ledger on a DatasetGrant's status (reserve, release, spend, remaining).
"""
