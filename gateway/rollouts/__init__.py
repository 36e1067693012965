"""Staged rollouts: pure decisions, their store, the controller, the daemon's service and the
operator's commands."""
