package mvcc

import (
	"fmt"
	"math/rand"
	"testing"
)

// TestApproximateSizes: once flushed, a shard holding 4 MB of values reads
// about that much, and the shard beside it in the same store, holding a
// few keys, reads far less.
func TestApproximateSizes(t *testing.T) {
	dir := t.TempDir()
	s := openStoreWith(t, dir, testOptions())
	big, err := s.OpenShard(1, nil, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	small, err := s.OpenShard(2, []byte("m"), nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	raw := make([]byte, 1000)
	value := func() string { rng.Read(raw); return string(raw) } // incompressible
	for i := range 4000 {
		mustPut(t, big, int64(2+i), fmt.Sprintf("a%06d", i), value())
	}
	for i := range 10 {
		mustPut(t, small, int64(5000+i), fmt.Sprintf("z%06d", i), value())
	}
	if err := s.Close(); err != nil { // writes the memtables out as tables
		t.Fatal(err)
	}
	s = openStoreWith(t, dir, testOptions())
	if big, err = s.OpenShard(1, nil, []byte("m")); err != nil {
		t.Fatal(err)
	}
	if small, err = s.OpenShard(2, []byte("m"), nil); err != nil {
		t.Fatal(err)
	}
	sizes := s.ApproximateSizes([]*Shard{big, small})
	if sizes[1] < 1<<20 || sizes[2] > sizes[1]/10 {
		t.Fatalf("approximate sizes %v: want shard 1 (4 MB of values) above 1 MiB and shard 2 (10 values) far below", sizes)
	}
	t.Logf("approximate sizes: %v", sizes)
}
