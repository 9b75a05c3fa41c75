"""An OpenAI Agents SDK agent whose conversation memory is a connectome-storage session.

    python examples/openai_agents_session.py                                 # file tree in ./storage_data
    CONNECTOME_STORAGE_TYPE=sqlite python examples/openai_agents_session.py  # same code, SQLite

Runs offline: the model is the SDK's own ScriptedModel, which answers from a script, and
tracing is off. With a real model, pass ``model="gpt-..."`` instead. Needs the
``openai-agents`` extra.
"""

from __future__ import annotations

import asyncio
import json
import os

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # no network: tracing would export

from agents import Agent, Runner
from agents.testing import ScriptedModel, assistant_message

from connectome_storage import create_storage_from_env
from connectome_storage.adapters.openai_agents import ConnectomeSession


async def main() -> None:
    model = ScriptedModel([[assistant_message("Hello Ada!")], [assistant_message("Your name is Ada.")]])
    agent = Agent(name="assistant", instructions="Answer briefly.", model=model)
    async with create_storage_from_env() as storage:
        session = ConnectomeSession("user-123", storage)
        await session.clear_session()  # start the demo from an empty history
        for question in ("Hello, I am Ada.", "What is my name?"):
            result = await Runner.run(agent, question, session=session)
            print(f"user: {question}\nassistant: {result.final_output}")
        # The second call saw the first turn: the session fed the stored history back.
        print(f"model saw {len(model.last_call.input)} items on the second turn")  # type: ignore[union-attr]
        history = await session.get_items()
        print(f"stored history ({len(history)} items):")
        print(json.dumps(history, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
