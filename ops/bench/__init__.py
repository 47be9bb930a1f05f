"""The benchmark: smsq against a naive one-task-per-SMS Celery app, on this machine, against
the DIDWW simulator. Run `python -m ops.bench` (or `make bench`); see docs/performance.md.
"""
