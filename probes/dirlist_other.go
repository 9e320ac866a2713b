//go:build !linux

package probes

import (
	"context"
	"fmt"
	"io"
	"os"
)

// readChunk is how many names one Readdirnames call returns: memory stays flat however large the
// directory, and the deadline is checked every chunk.
const readChunk = 4096

// listDir calls fn with the entries of dir, a chunk at a time, checking ctx between chunks.
// Portable fallback: subdirectories are not told apart (they count as ignored names anyway).
func listDir(ctx context.Context, dir string, fn func(f *os.File, ents []dirEnt)) error {
	if err := ctx.Err(); err != nil {
		return withHint(fmt.Errorf("list %s: %w: %w", dir, ErrBudget, err))
	}
	f, err := os.Open(dir)
	if err != nil {
		return withHint(err) // an *fs.PathError: "open <dir>: <reason>"
	}
	defer f.Close()
	ents := make([]dirEnt, 0, readChunk)
	for {
		names, err := f.Readdirnames(readChunk)
		ents = ents[:0]
		for _, n := range names {
			ents = append(ents, dirEnt{name: []byte(n)})
		}
		if len(ents) > 0 {
			fn(f, ents)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return withHint(err) // an *fs.PathError naming dir
		}
		if err := ctx.Err(); err != nil {
			return withHint(fmt.Errorf("list %s: %w: %w", dir, ErrBudget, err))
		}
	}
}
