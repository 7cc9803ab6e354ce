"""Scheduling policy: pure decisions about spot versus dedicated capacity.

See ``inferbatch.policy.escalation`` for the contracts and the policies.
"""

from inferbatch.policy.escalation import (
    DEFAULT_POLICY,
    POLICY_NAMES,
    AllDedicatedPolicy,
    BatchState,
    ClusterState,
    DeadlineAwarePolicy,
    Decision,
    EscalationConfig,
    GreedyPolicy,
    Policy,
    SpotOnlyPolicy,
    UniformProgressPolicy,
    autoscale_target,
    escalate_request,
    policy_by_name,
)

__all__ = [
    "DEFAULT_POLICY",
    "POLICY_NAMES",
    "AllDedicatedPolicy",
    "BatchState",
    "ClusterState",
    "DeadlineAwarePolicy",
    "Decision",
    "EscalationConfig",
    "GreedyPolicy",
    "Policy",
    "SpotOnlyPolicy",
    "UniformProgressPolicy",
    "autoscale_target",
    "escalate_request",
    "policy_by_name",
]
