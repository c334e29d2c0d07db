"""Small helpers shared by the app: logging, text handling."""
