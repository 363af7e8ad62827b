package replica

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// KubernetesSplitKeys is the --initial-split-keys=kubernetes profile: a
// shard starts at each of the resource prefixes Kubernetes writes most
// (events and leases churn, pods and nodes are large and busy, secrets and
// configmaps are many), so their writes, compactions and watches are spread
// over 9 Raft groups. Keys between two prefixes belong to the shard of the
// one before (e.g. /registry/flowschemas/ to the events shard).
var KubernetesSplitKeys = []string{
	"/registry/configmaps/",
	"/registry/deployments/",
	"/registry/events/",
	"/registry/leases/",
	"/registry/minions/",
	"/registry/pods/",
	"/registry/secrets/",
	"/registry/services/",
}

// ParseSplitKeys reads --initial-split-keys: a comma-separated list of
// keys, where the name of a profile ("kubernetes") stands for its keys.
// Keys are sorted and deduplicated; an empty list is one data shard.
func ParseSplitKeys(s string) ([]string, error) {
	var keys []string
	for _, k := range strings.Split(s, ",") {
		switch k = strings.TrimSpace(k); k {
		case "":
		case "kubernetes":
			keys = append(keys, KubernetesSplitKeys...)
		default:
			keys = append(keys, k)
		}
	}
	return normalSplitKeys(keys)
}

func normalSplitKeys(keys []string) ([]string, error) {
	out := slices.Clone(keys)
	slices.Sort(out)
	out = slices.Compact(out)
	for _, k := range out {
		if k == "" || k == "\x00" {
			return nil, errors.New("replica: a split key must not be empty (the first shard starts at the smallest key)")
		}
	}
	return out, nil
}

// loadOrSaveSplitKeys pins the initial split keys in the data dir, as the
// initial cluster is pinned: the meta state machine is rebuilt from them on
// every start. A store created before split keys existed has none. keys
// given to a store that already has its own are ignored (as etcd ignores
// --initial-cluster after bootstrap), with a warning from the caller.
func loadOrSaveSplitKeys(dir string, keys []string, existed bool) (saved []string, ignored bool, err error) {
	path := filepath.Join(dir, "initial-split-keys.json")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &saved); err != nil {
			return nil, false, fmt.Errorf("replica: %s: %w", path, err)
		}
		return saved, len(keys) > 0 && !slices.Equal(saved, keys), nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, false, err
	case existed:
		return nil, len(keys) > 0, nil
	}
	if b, err = json.MarshalIndent(keys, "", "  "); err != nil {
		return nil, false, err
	}
	return keys, false, writeFileAtomic(path, b)
}

// splitRanges cuts the keyspace at keys (sorted): [ "", k1 ), [k1, k2), ...,
// [kn, end of keyspace).
func splitRanges(keys []string) [][2][]byte {
	var out [][2][]byte
	start := []byte(nil)
	for _, k := range keys {
		kb := []byte(k)
		if bytes.Compare(kb, start) <= 0 {
			continue
		}
		out = append(out, [2][]byte{start, kb})
		start = kb
	}
	return append(out, [2][]byte{start, nil})
}
