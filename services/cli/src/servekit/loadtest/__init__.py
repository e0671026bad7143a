"""`servekit loadtest`: run the Locust users headless, gate on an SLO, report and compare.

Locust is only ever started as a subprocess: importing it monkey-patches the
standard library with gevent, which must not happen in the CLI or a test process.
The modules here that the locustfile imports too (`slo`, `requestlog`) use the
standard library only.
"""
