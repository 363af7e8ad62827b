package replica

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// What a store is created with and keeps for good lives in small files in
// its data dir (cluster.json, initial-split-keys.json, replication-factor,
// deployment-id): the meta state machine is rebuilt from them on every
// start, so later flags must not change them.

// writeFileAtomic writes a file whole or not at all.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// loadOrSaveReplicationFactor pins the replication factor: rf (at most
// one replica per store) on a new store, the saved one later. A store
// created before the factor existed gets 0: every shard on every store,
// in member order, as its meta state has always had them.
func loadOrSaveReplicationFactor(dir string, rf, stores int, existed bool) (int, error) {
	path := filepath.Join(dir, "replication-factor")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || n < 1 {
			return 0, fmt.Errorf("replica: %s: bad replication factor %q", path, b)
		}
		return n, nil
	case !errors.Is(err, os.ErrNotExist):
		return 0, err
	case existed:
		return 0, nil
	case rf < 1:
		return 0, fmt.Errorf("replica: replication factor %d: want at least 1", rf)
	}
	rf = min(rf, stores)
	return rf, writeFileAtomic(path, []byte(strconv.Itoa(rf)+"\n"))
}
