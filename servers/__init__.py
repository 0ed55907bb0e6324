"""Echo server backends behind one contract (`contract`), named by one registry (`registry`),
run as one or many processes on one port by the supervisor (`supervisor`).

Nothing here imports locust: `import locust` monkey-patches the whole process with gevent.
"""
