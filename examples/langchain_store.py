"""LangChain's key-value store, LLM cache and chat history on connectome-storage.

    python examples/langchain_store.py                                 # file tree in ./storage_data
    CONNECTOME_STORAGE_TYPE=sqlite python examples/langchain_store.py  # same code, SQLite

Runs offline (the LLM is LangChain's FakeListLLM). Plain synchronous LangChain code: the
adapters open the storage on their own thread. Needs the ``langchain`` extra.
"""

from __future__ import annotations

from langchain_core.globals import set_llm_cache
from langchain_core.language_models import FakeListLLM
from langchain_core.messages import AIMessage, HumanMessage

from connectome_storage import create_storage_from_env
from connectome_storage.adapters.langchain import (
    ConnectomeChatMessageHistory,
    ConnectomeLLMCache,
    ConnectomeStore,
)


def main() -> None:
    storage = create_storage_from_env()  # not opened here: the adapters open it
    store = ConnectomeStore(storage)  # key-value namespace "langchain"
    cache = ConnectomeLLMCache(storage, ttl=3600)
    history = ConnectomeChatMessageHistory("chat-42", storage)
    try:
        store.mset([("user:ada", {"name": "Ada", "plan": "pro"}), ("user:bob", {"name": "Bob", "plan": "free"})])
        print("users:", list(store.yield_keys(prefix="user:")))
        print("ada:", store.mget(["user:ada"])[0])

        cache.clear()
        set_llm_cache(cache)
        llm = FakeListLLM(responses=["Lisbon is the capital of Portugal.", "a different answer"])
        first = llm.invoke("What is the capital of Portugal?")
        second = llm.invoke("What is the capital of Portugal?")  # served from the cache
        print("llm:", first, "| again:", second, "| cached:", first == second)

        history.clear()
        history.add_messages([HumanMessage(content="Hi, I am Ada."), AIMessage(content="Hello Ada!")])
        print("chat:", [f"{m.type}: {m.content}" for m in history.messages])
    finally:
        set_llm_cache(None)
        store.close()  # shuts down the storage the adapters opened


if __name__ == "__main__":
    main()
