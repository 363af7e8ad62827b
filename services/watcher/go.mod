module github.com/tessera-kv/tessera/services/watcher

go 1.26.8

require (
	github.com/tessera-kv/tessera/pkg v0.0.0-00010101000000-000000000000
	github.com/tessera-kv/tessera/proto v0.0.0
	go.etcd.io/etcd/api/v3 v3.7.3
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.32.0 // indirect
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20261012220534-4341edf3f941 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261005182115-fad411399dd8 // indirect
)

replace (
	github.com/tessera-kv/tessera/pkg => ../../pkg
	github.com/tessera-kv/tessera/proto => ../../proto
)
