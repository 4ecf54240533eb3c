module github.com/deeprecall/deeprecall/clients/go

// The floor is what the generated code needs: grpc.SupportPackageIsVersion7 (grpc-go 1.32+)
// and protoimpl's version 20 (google.golang.org/protobuf 1.26+). These are also the versions
// Debian bookworm packages, which the repository's own test builds against.
go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
