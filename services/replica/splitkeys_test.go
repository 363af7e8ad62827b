package replica

import (
	"slices"
	"testing"
)

func TestParseSplitKeys(t *testing.T) {
	got, err := ParseSplitKeys(" /b/, kubernetes ,/a/,/b/")
	if err != nil {
		t.Fatal(err)
	}
	want := append([]string{"/a/", "/b/"}, KubernetesSplitKeys...)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if len(KubernetesSplitKeys) < 8 {
		t.Fatalf("the kubernetes profile has %d keys: 9 shards or more were promised", len(KubernetesSplitKeys))
	}
	if keys, err := ParseSplitKeys(""); err != nil || len(keys) != 0 {
		t.Fatalf("empty: %q %v", keys, err)
	}
	if _, err := normalSplitKeys([]string{"\x00"}); err == nil {
		t.Fatal("a split at the smallest key was accepted")
	}
}

func TestBootstrapShardsCoverTheKeyspace(t *testing.T) {
	st := bootstrapState([]Member{{ID: 1}, {ID: 2}}, []string{"/b/", "/c/"}, 3)
	shards := st.ShardMap.Shards
	if len(shards) != 3 {
		t.Fatalf("%d shards, want 3", len(shards))
	}
	if len(shards[0].StartKey) != 0 || len(shards[2].EndKey) != 0 {
		t.Fatalf("first shard starts at %q, last ends at %q", shards[0].StartKey, shards[2].EndKey)
	}
	for i := 1; i < len(shards); i++ {
		if string(shards[i-1].EndKey) != string(shards[i].StartKey) {
			t.Fatalf("gap or overlap between shard %d [.., %q) and [%q, ..)", i-1, shards[i-1].EndKey, shards[i].StartKey)
		}
		if shards[i].Id != shards[i-1].Id+1 || len(shards[i].Replicas) != 2 {
			t.Fatalf("shard %d: %v", i, shards[i])
		}
	}
}

func TestSplitKeysArePinned(t *testing.T) {
	dir := t.TempDir()
	keys, ignored, err := loadOrSaveSplitKeys(dir, []string{"/a/"}, false)
	if err != nil || ignored || !slices.Equal(keys, []string{"/a/"}) {
		t.Fatalf("first start: %q %v %v", keys, ignored, err)
	}
	keys, ignored, err = loadOrSaveSplitKeys(dir, []string{"/b/"}, true)
	if err != nil || !ignored || !slices.Equal(keys, []string{"/a/"}) {
		t.Fatalf("restart with other keys: %q ignored=%v %v (want the saved ones)", keys, ignored, err)
	}
	keys, ignored, err = loadOrSaveSplitKeys(t.TempDir(), []string{"/b/"}, true)
	if err != nil || !ignored || len(keys) != 0 {
		t.Fatalf("a store from before split keys: %q ignored=%v %v", keys, ignored, err)
	}
}
