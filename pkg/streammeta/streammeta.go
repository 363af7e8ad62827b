// Package streammeta names the gRPC metadata a gateway adds to the watch
// streams it opens to the watcher tier. The gateway forwards watch
// responses in wire form without decoding them, so the watcher writes the
// gateway's cluster and member IDs into the response headers itself.
package streammeta

import (
	"strconv"

	"google.golang.org/grpc/metadata"
)

const (
	clusterIDKey = "tessera-cluster-id"
	memberIDKey  = "tessera-member-id"
)

// SetIdentity records the IDs response headers should carry.
func SetIdentity(md metadata.MD, clusterID, memberID uint64) {
	md.Set(clusterIDKey, strconv.FormatUint(clusterID, 10))
	md.Set(memberIDKey, strconv.FormatUint(memberID, 10))
}

// Identity reads the IDs (zero when absent or malformed).
func Identity(md metadata.MD) (clusterID, memberID uint64) {
	if v := md.Get(clusterIDKey); len(v) > 0 {
		clusterID, _ = strconv.ParseUint(v[0], 10, 64)
	}
	if v := md.Get(memberIDKey); len(v) > 0 {
		memberID, _ = strconv.ParseUint(v[0], 10, 64)
	}
	return clusterID, memberID
}
