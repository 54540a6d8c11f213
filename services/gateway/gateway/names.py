"""What owner and collection names may be: one home for uploads, API keys and retention rules."""

from __future__ import annotations

import re

OWNER = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")
OWNER_RULE = "1-128 characters of letters, digits and ._@-"
COLLECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
