"""Core of embedfleet: configuration, registry, embedding pipeline, storage, jobs. Imports no web framework."""
