"""moto's server, with DynamoDB's per-item atomicity.

moto serves requests on threads and its DynamoDB backend checks a condition and then writes
without a lock, so two conditional UpdateItems at the same version can both succeed (the
DynamoDB contract test lost 1 of 80 increments in CI). Real DynamoDB applies a conditional
write atomically. This serialises DynamoDB calls only: SQS long polls and S3 transfers keep
their own threads.
"""

import sys
import threading

from moto import server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

_dynamodb = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _call(self, environ, start_response):
    if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
        with _dynamodb:
            # The body is produced inside the lock: moto's reply is a list, not a stream.
            return list(_dispatch(self, environ, start_response))
    return _dispatch(self, environ, start_response)


DomainDispatcherApplication.__call__ = _call

if __name__ == "__main__":
    server.main(sys.argv[1:])
