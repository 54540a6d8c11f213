"""The schemer: JSON documents to collections, an inferred schema, a table or JSONB."""
