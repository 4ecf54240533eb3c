"""A protoc plugin that runs the grpc_python generator built into grpcio-tools.

grpcio-tools ships that generator inside its bundled protoc rather than as a
`protoc-gen-grpc_python` executable, and buf only drives protoc's own generators
(`protoc_builtin`) by name. This adapter lets buf.gen.yaml use it as a local plugin, so the
gRPC stubs come from the same pinned grpcio-tools as the messages.
"""

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    # The generator handles proto3 `optional`; without saying so, buf refuses the plugin.
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as scratch:
        root = pathlib.Path(scratch)
        descriptors = root / "descriptors.binpb"
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = root / "out"
        out.mkdir()
        option = f"{request.parameter}:" if request.parameter else ""
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--descriptor_set_in={descriptors}",
                f"--grpc_python_out={option}{out}",
                *request.file_to_generate,
            ]
        )
        if status != 0:
            response.error = f"grpc_python generator failed with status {status}"
        else:
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                generated = response.file.add()
                generated.name = path.relative_to(out).as_posix()
                generated.content = path.read_text(encoding="utf-8")
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
