"""`mammoth`: MammothBox from a terminal (app.py)."""
