"""Jobs, tasks, the scheduler and the worker service."""
