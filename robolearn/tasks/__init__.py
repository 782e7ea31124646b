"""MuJoCo tasks from backend-neutral definitions (see docs/design.md, "Tasks")."""
