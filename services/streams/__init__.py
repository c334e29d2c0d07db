"""Streams in Redis, shared by every replica: key names, Lua scripts, the store and the buffered writer."""
