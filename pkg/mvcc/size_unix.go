//go:build unix

package mvcc

import (
	"io/fs"
	"syscall"
)

// allocated is the disk space a file takes: Badger preallocates its value
// log and memtable files sparsely, so their length overstates it.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// FreeBytes is the space left for the store on its filesystem (to an
// unprivileged writer), or -1 if it cannot be told.
func (s *Store) FreeBytes() int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
