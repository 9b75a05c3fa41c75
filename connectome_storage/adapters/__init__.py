"""Framework adapters: connectome-storage as the memory of the agent frameworks people already run.

One module per framework, each behind an extra and importing its framework only when the
module itself is imported (docs/adapters.md):

- ``connectome_storage.adapters.openai_agents`` (extra ``openai-agents``): ``ConnectomeSession``,
  the OpenAI Agents SDK ``Session`` over a conversation's raw message history.
- ``connectome_storage.adapters.langchain`` (extra ``langchain``): ``ConnectomeStore``,
  ``ConnectomeLLMCache`` and ``ConnectomeChatMessageHistory``.
- ``connectome_storage.adapters.langgraph`` (extra ``langgraph``): ``ConnectomeCheckpointSaver``
  and ``ConnectomeStore``.

This package itself imports no framework.
"""

from __future__ import annotations

__all__: list[str] = []
