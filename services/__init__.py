"""Services: Redis stream store, Dify client, producer pool and the pieces they share."""
