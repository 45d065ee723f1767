"""The web page (app.py): an HTTP server of one detector at a time, its page, and what it accepts."""
