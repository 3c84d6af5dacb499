"""Pure policy: (request, grants, policy, approvals) -> decisions with reasons a person can act on."""
