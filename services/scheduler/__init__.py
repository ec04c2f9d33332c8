"""The scheduler: keeps each run's record, dispatches ready nodes, finishes runs."""
