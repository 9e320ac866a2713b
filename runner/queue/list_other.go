//go:build !linux

package queue

import (
	"context"
	"fmt"
	"io"
	"os"
)

// readChunk is how many names one Readdirnames call returns: memory stays flat however large the
// directory, and the deadline is checked every chunk.
const readChunk = 4096

// List calls fn with the entries of dir, a chunk at a time, checking ctx between chunks.
// Portable fallback: subdirectories are not told apart (they count as foreign names anyway).
func List(ctx context.Context, dir string, fn func(f *os.File, ents []Entry)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	f, err := os.Open(dir)
	if err != nil {
		return err // an *fs.PathError: "open <dir>: <reason>"
	}
	defer f.Close()
	ents := make([]Entry, 0, readChunk)
	for {
		names, err := f.Readdirnames(readChunk)
		ents = ents[:0]
		for _, n := range names {
			ents = append(ents, Entry{Name: []byte(n)})
		}
		if len(ents) > 0 {
			fn(f, ents)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err // an *fs.PathError naming dir
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %s: %w", dir, err)
		}
	}
}
