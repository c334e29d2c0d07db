"""Services: Redis stream store, Dify client, the answer engine and the pieces they share."""
