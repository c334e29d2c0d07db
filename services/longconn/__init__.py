"""WeCom's long-connection mode (wecom-protocol.md §4): one replica holds each bot's WebSocket, the others stand by."""
