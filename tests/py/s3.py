"""S3 helper for the tests (boto3, installed with moto): list, download, uploads in progress."""
import json
import os
import sys

import boto3

endpoint, bucket, cmd = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")


def keys():
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


if cmd == "list":
    print(json.dumps(keys()))
elif cmd == "download":
    dest = sys.argv[4]
    for key in keys():
        path = os.path.join(dest, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, key, path)
    print(json.dumps(keys()))
elif cmd == "uploads":
    print(json.dumps([u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]))
else:
    raise SystemExit(f"unknown command {cmd}")
