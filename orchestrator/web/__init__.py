"""The dashboard: server-rendered pages over a read-only job source, served with an access token."""
