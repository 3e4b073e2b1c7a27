#!/usr/bin/env bash
# Regenerate the committed gRPC modules from src/duplexd/rpc/tts.proto.
# `-I src` makes the generated imports `duplexd.rpc.tts_pb2`; mypy-protobuf writes typed stubs.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-src}"
python -m grpc_tools.protoc -I src \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  src/duplexd/rpc/tts.proto
