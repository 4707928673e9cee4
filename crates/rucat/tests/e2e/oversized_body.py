"""Posts bodies the server refuses with urllib and requests, as Python users' code does, and
prints one JSON object: for each case, the status and error code read, or the connection error
the client saw instead."""

import json
import sys
import urllib.error
import urllib.request

import requests

url, token, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
big = json.dumps(
    {"name": "big", "engine_type": "Spark", "version": "4.3.0", "configs": {"spark.x": "x" * size}}
).encode()
auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
anonymous = {"Content-Type": "application/json"}


def with_urllib(headers):
    request = urllib.request.Request(url, data=big, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return {"status": answer.status, "body": json.loads(answer.read())}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "body": json.loads(error.read())}
    except Exception as error:  # the connection broke: what the client saw
        return {"status": None, "error": repr(error)}


def with_requests(headers, chunked=False):
    data = (big[i : i + 65536] for i in range(0, len(big), 65536)) if chunked else big
    try:
        answer = requests.post(url, data=data, headers=headers, timeout=60)
        return {"status": answer.status_code, "body": answer.json()}
    except Exception as error:
        return {"status": None, "error": repr(error)}


print(
    json.dumps(
        {
            "urllib_too_large": with_urllib(auth),
            "urllib_unauthenticated": with_urllib(anonymous),
            "requests_too_large": with_requests(auth),
            "requests_chunked_too_large": with_requests(auth, chunked=True),
            "requests_unauthenticated": with_requests(anonymous),
        }
    )
)
