"""Example GenAI application for taskq: LLM inference, RAG and agents."""
