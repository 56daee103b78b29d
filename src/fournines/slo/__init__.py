"""Service level objectives: specs, Prometheus rules, error budgets and the deploy gate."""
