//go:build !unix

package mvcc

import "io/fs"

// allocated is the file's length where block counts are not available.
func allocated(info fs.FileInfo) int64 { return info.Size() }

// FreeBytes is -1 where the filesystem cannot be asked.
func (s *Store) FreeBytes() int64 { return -1 }
