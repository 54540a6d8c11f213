"""The schemer's SQL, every statement of it: collections (json_collections, migrations,
audit), documents (uploads, json_documents, the collection tables) and ddl (the text of the
collection tables' statements, from server-quoted names)."""

from schemer.repo import collections, ddl, documents

__all__ = ["collections", "ddl", "documents"]
