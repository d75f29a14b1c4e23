"""How a training process says how it ended, for whoever started it."""

EXIT_USER_ERROR = 42
"""The task failed for the user's data or parameters (another try would fail the same):
a training job's exit code, and a training pod's (its Job's podFailurePolicy does not
retry it)."""
EXIT_CRASHED = 1
"""A fault worth another try, which resumes from the last checkpoint."""
