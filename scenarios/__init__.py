"""Locust scenarios: Users, load shapes and the web UI extension. Imported only inside Locust's own
processes: `import locust` monkey-patches the whole process with gevent."""
