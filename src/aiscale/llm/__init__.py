"""LLM serving's control-side parts: routing across engine replicas, the token ledger, and
the KV store that keeps a conversation's KV cache when it changes replica (``kv_store``).

Sits with the control loops (it may import engines, replicas, registry, contracts; never
serving, starlette or uvicorn). Import the modules themselves (``aiscale.llm.routing``,
``aiscale.llm.ledger``); this package re-exports nothing so that importing one part never
loads another's dependencies.
"""
