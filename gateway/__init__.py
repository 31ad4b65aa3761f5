"""HTTP gateway (FastAPI): routes, schemas, auth. Thin: every decision lives in services/."""
