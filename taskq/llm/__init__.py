"""LLM inference on taskq: the anthropic SDK client, provider failures, prices, streaming calls.

Needs the ``llm`` extra (``pip install 'taskq[llm]'``); nothing here is imported by the core library.
"""

from taskq.llm.client import LLMClients, LLMConfig
from taskq.llm.guard import Guard, Limits
from taskq.llm.failures import ProviderRejected, ProviderUnavailable, classify
from taskq.llm.inference import META_KEY, complete
from taskq.llm.pricing import PRICES, Price, cost
from taskq.llm.service import LLM
from taskq.llm.usage import usage_store

__all__ = ["LLM", "Guard", "LLMClients", "LLMConfig", "Limits", "META_KEY", "usage_store", "PRICES", "Price", "ProviderRejected", "ProviderUnavailable",
           "classify", "complete", "cost"]
