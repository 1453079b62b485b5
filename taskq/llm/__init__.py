"""LLM inference on taskq: the anthropic SDK client, provider failures, prices, streaming calls.

Needs the ``llm`` extra (``pip install 'taskq[llm]'``); nothing here is imported by the core library.
"""

from taskq.llm.client import LLMClients, LLMConfig
from taskq.llm.failures import ProviderRejected, ProviderUnavailable, classify
from taskq.llm.inference import META_KEY, complete
from taskq.llm.pricing import PRICES, Price, cost

__all__ = ["LLMClients", "LLMConfig", "META_KEY", "PRICES", "Price", "ProviderRejected", "ProviderUnavailable",
           "classify", "complete", "cost"]
