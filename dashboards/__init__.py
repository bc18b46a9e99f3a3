"""The Grafana dashboard, its provisioning and docker compose files, and the tools that check and draw it."""
