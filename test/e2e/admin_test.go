package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestAdminCLI runs tessera shard list and tessera store list against
// tessera dev: the one store reports itself up, holding and leading both
// shards.
func TestAdminCLI(t *testing.T) {
	d := newDevNode(t)
	d.extraArgs = []string{"--initial-split-keys", "/m"}
	d.start(t)
	shards := tessera(t, "shard", "list", "--endpoints", d.endpoint())
	if !strings.Contains(shards, `"/m"`) || strings.Count(shards, "\n") != 3 {
		t.Fatalf("tessera shard list: want a header and two shards split at /m:\n%s", shards)
	}
	var stores string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		stores = tessera(t, "store", "list", "--endpoints", d.endpoint())
		lines := strings.Split(strings.TrimSpace(stores), "\n")
		if len(lines) == 2 {
			f := strings.Fields(lines[1])
			// ID STATE HEARTBEAT(2 words) LABELS REPLICAS LEADING ...
			if len(f) > 6 && f[0] == "1" && f[1] == "up" && f[5] == "2" && f[6] == "2" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("tessera store list: want store 1 up, holding and leading 2 shards:\n%s", stores)
		}
	}
}
