"""HTTP blueprints: one per endpoint family."""
