"""``tether audit agentic``: scripted scenarios where an agent can misbehave, and spec gaming on
code tasks with visible and held-out tests (docs/agents.md)."""
