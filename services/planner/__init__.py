"""The planner: turns a run request into a validated plan, or a rejection that says what to fix."""
