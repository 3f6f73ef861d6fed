#!/bin/sh
# bucket-init (docker compose): create the one bucket autolabel reads and writes.
# Runs in the pinned minio/mc image; AUTOLABEL_S3_BUCKET is the project's setting.
set -eu
: "${AUTOLABEL_S3_BUCKET:?AUTOLABEL_S3_BUCKET is not set}"
tries=0
until mc alias set store http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "bucket-init: MinIO did not answer" >&2
    exit 1
  fi
  sleep 2
done
mc mb --ignore-existing "store/${AUTOLABEL_S3_BUCKET}"
echo "bucket-init: bucket ${AUTOLABEL_S3_BUCKET} ready"
