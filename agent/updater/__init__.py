"""The device side of safe model updates: a persisted state machine over A/B model slots.

The long-running daemon uses ``manager.UpdateManager``; the update work itself (TUF refresh,
download, delta apply, health gate) runs in a child process, ``python -m agent.updater.worker``.
"""
