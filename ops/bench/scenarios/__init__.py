"""One module per scenario; each has `run(ctx) -> ScenarioResult` (sending.py has two)."""
