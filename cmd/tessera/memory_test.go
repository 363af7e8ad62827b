package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCgroupMemoryLimit(t *testing.T) {
	write := func(t *testing.T, root, rel, content string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name, file, content string
		want                int64
	}{
		{"v2 limit", "memory.max", "1073741824\n", 1 << 30},
		{"v2 unlimited", "memory.max", "max\n", 0},
		{"v1 limit", "memory/memory.limit_in_bytes", "536870912\n", 512 << 20},
		{"v1 unlimited", "memory/memory.limit_in_bytes", "9223372036854771712\n", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, root, c.file, c.content)
			if got := cgroupMemoryLimit(root); got != c.want {
				t.Fatalf("cgroupMemoryLimit = %d, want %d", got, c.want)
			}
		})
	}
	if got := cgroupMemoryLimit(t.TempDir()); got != 0 {
		t.Fatalf("no cgroup files: %d, want 0", got)
	}
}

func TestSoftLimitStaysUnderTheContainer(t *testing.T) {
	if got := softLimit(400<<20, 0); got != 400<<20 {
		t.Fatalf("no container limit: %d", got)
	}
	if got := softLimit(400<<20, 4<<30); got != 400<<20 {
		t.Fatalf("a roomy container: %d", got)
	}
	if got, want := softLimit(400<<20, 256<<20), int64(256<<20)/10*9; got != want {
		t.Fatalf("a tight container: %d, want %d", got, want)
	}
}

func TestRaisedLimitFollowsLiveMemory(t *testing.T) {
	const budget = 400 << 20
	for _, c := range []struct {
		name          string
		hardCap, live int64
		want          int64
	}{
		{"room for garbage", 0, 200 << 20, budget},
		{"live within three quarters", 0, 300 << 20, budget},
		{"live near the budget", 0, 320 << 20, 640 << 20},
		{"live past the budget", 0, 600 << 20, 1200 << 20},
		{"within the container", 700 << 20, 600 << 20, 700 << 20},
		{"never below the budget", 300 << 20, 600 << 20, budget},
	} {
		if got := raisedLimit(budget, c.hardCap, c.live); got != c.want {
			t.Errorf("%s: raisedLimit(%d MiB live) = %d MiB, want %d MiB", c.name, c.live>>20, got>>20, c.want>>20)
		}
	}
}
