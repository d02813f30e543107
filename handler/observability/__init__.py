"""What the service tells its operators: JSON log lines, CloudWatch metrics (EMF) and X-Ray traces,
all through Powertools for AWS Lambda, in one place.

`logs` writes the log lines, `metrics` the EMF documents (on the same stdout, where Lambda sends
both to CloudWatch Logs), `traces` the X-Ray subsegments (on Lambda only), and `requests` the
HTTP middleware that ties them to each request.
"""

SERVICE = "srocks-music"
"""The service's name in log lines and traces."""
