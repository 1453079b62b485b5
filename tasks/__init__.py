"""Example GenAI application for taskq: LLM inference, RAG and agents."""

# Load the app (and with it every task module) first, whichever module of the package is imported first:
# ``from tasks.llm import infer`` then finds tasks.agents' import of tasks.llm already satisfiable.
from tasks import app as _app  # noqa: E402,F401
