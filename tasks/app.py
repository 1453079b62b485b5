"""The example app. Broker and backend come from ``TASKQ_BROKER_URL`` / ``TASKQ_RESULT_BACKEND``;
with neither set it runs on the embedded local broker."""

from taskq import Taskq

app = Taskq("tasks")

# Importing the task modules registers their tasks with the app.
from tasks import agents, llm, rag  # noqa: E402,F401
