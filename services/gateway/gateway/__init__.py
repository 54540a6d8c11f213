"""The MammothBox HTTP gateway."""
