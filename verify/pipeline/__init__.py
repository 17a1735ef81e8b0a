"""The one path every command takes: plan, build, export, run, oracle, judge (stages.py); user code in a worker
(isolation.py)."""
