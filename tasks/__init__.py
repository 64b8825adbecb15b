"""weakflow: tasks."""
