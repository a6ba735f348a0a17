"""Fleet rollouts: many hypervisors in waves with a failure budget (issue #28).

plan.py (pure semantics) <- hostrun.py (the only coupling to the per-host Engine) <- record.py,
local.py (this control node), show.py (recap), front.py (flags to a rollout). Nothing here imports
temporalio; the Temporal engine lives apart and is imported only when it is used.
"""
