"""One module per scenario of the issue; each has `run(ctx) -> ScenarioResult`."""
