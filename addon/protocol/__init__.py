"""The wire: strict JSON-RPC parsing, SSE framing, path routing, session bindings, error bodies."""
