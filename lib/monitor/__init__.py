"""Reading what a running, pinned VM really does: NUMA memory placement, thread CPU use, intruders."""
