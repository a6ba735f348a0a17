"""The Temporal engine: a rollout workflow, one child workflow per host (a stable id, so one rollout
per host fleet-wide), one activity per step run by workers on any number of control nodes.

Only this package imports temporalio, and only tasks that use `--engine=temporal` (or fleet.worker)
import this package: the local engine's start-up never pays for it.

    shapes.py      what travels through Temporal: names, outcomes, never a secret (no temporalio)
    workflows.py   the rollout and host workflows (deterministic; the sandbox re-imports them)
    activities.py  one step on one host through lib/fleet/hostrun.py, heartbeating
    worker.py      `invoke fleet.worker`: workflows on the main queue, activities on a site's
    client.py      start, follow, query, signal a rollout from any control node
"""
