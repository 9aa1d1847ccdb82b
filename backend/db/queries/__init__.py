"""The queries task bodies run, one module per domain, keyword-only and session-first."""
