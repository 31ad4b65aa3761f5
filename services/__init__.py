"""Core of embedfleet: config, registry, embedding pipeline, storage, jobs. Imports no web framework."""
