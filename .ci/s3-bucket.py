#!/usr/bin/env python3
"""Makes an S3 bucket (a PUT signed with SigV4, Python's standard library
only): python3 .ci/s3-bucket.py ENDPOINT KEY SECRET BUCKET. One that is
there already is no error."""
import datetime, hashlib, hmac, sys, urllib.request, urllib.error
endpoint, key, secret, bucket = sys.argv[1:5]
host = endpoint.split("://", 1)[1].rstrip("/")
now = datetime.datetime.now(datetime.timezone.utc)
amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
region, service = "us-east-1", "s3"
payload = hashlib.sha256(b"").hexdigest()
canonical = "\n".join(["PUT", f"/{bucket}", "", f"host:{host}", f"x-amz-content-sha256:{payload}", f"x-amz-date:{amz}", "", "host;x-amz-content-sha256;x-amz-date", payload])
scope = f"{day}/{region}/{service}/aws4_request"
to_sign = "\n".join(["AWS4-HMAC-SHA256", amz, scope, hashlib.sha256(canonical.encode()).hexdigest()])
k = ("AWS4" + secret).encode()
for part in (day, region, service, "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(f"{endpoint.rstrip('/')}/{bucket}", method="PUT", headers={
    "x-amz-date": amz, "x-amz-content-sha256": payload,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"})
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    body = e.read().decode(errors="replace")
    if "BucketAlreadyOwnedByYou" in body or "BucketAlreadyExists" in body:
        sys.exit(0)
    sys.exit(f"cannot make bucket {bucket}: {e.code} {body[:300]}")
