"""A LangGraph graph whose state and long-term memory live in connectome-storage.

    python examples/langgraph_checkpoint.py                                 # file tree in ./storage_data
    CONNECTOME_STORAGE_TYPE=sqlite python examples/langgraph_checkpoint.py  # same code, SQLite

Runs offline (the "model" is a plain function). Each run continues the same thread: the
checkpointer brings back its state, so the turn count goes up by one per run, and the store
remembers how many times the user came back. Plain synchronous LangGraph code: the adapters
open the storage on their own thread. Needs the ``langgraph`` extra.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.store.base import BaseStore

from connectome_storage import create_storage_from_env
from connectome_storage.adapters.langgraph import ConnectomeCheckpointSaver, ConnectomeStore


class State(TypedDict):
    turns: Annotated[int, operator.add]
    messages: Annotated[list[Any], add_messages]


def respond(state: State, *, store: BaseStore) -> dict[str, Any]:
    seen = store.get(("users", "ada"), "visits")
    visits = (seen.value["count"] if seen else 0) + 1
    store.put(("users", "ada"), "visits", {"count": visits})
    reply = f"Hello Ada, this is turn {state['turns'] + 1} (visit {visits})."
    return {"turns": 1, "messages": [AIMessage(content=reply)]}


def main() -> None:
    storage = create_storage_from_env()  # not opened here: the adapters open it
    checkpointer = ConnectomeCheckpointSaver(storage)
    store = ConnectomeStore(storage)
    builder = StateGraph(State)
    builder.add_node("respond", respond)
    builder.add_edge(START, "respond")
    builder.add_edge("respond", END)
    graph = builder.compile(checkpointer=checkpointer, store=store)
    config = {"configurable": {"thread_id": "ada-chat"}}
    try:
        out = graph.invoke({"messages": [HumanMessage(content="Hi!")]}, config)
        print("reply:", out["messages"][-1].content)
        print("turns:", out["turns"], "| messages in the thread:", len(out["messages"]))
        print("checkpoints in the thread:", len(list(checkpointer.list(config))))
    finally:
        checkpointer.close()  # shuts down the storage the adapters opened


if __name__ == "__main__":
    main()
