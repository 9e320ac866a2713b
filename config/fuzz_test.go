package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse: any bytes give a configuration or an error naming the file, never a panic; a
// configuration that parses validates again unchanged and survives a round trip through
// Redacted.
func FuzzParse(f *testing.F) {
	for _, glob := range []string{"testdata/*.yml", "../examples/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, p := range files {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Add([]byte("queues:\n  - {name: in, dir: q, slices: 2, handler: {exec: [cat]}}\n"))
	f.Add([]byte("queues: [{name: in, dir: q, slices: 1, max_message_bytes: -1, handler: {exec: [x]}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const path = "/etc/qslice/fuzz.yaml"
		c, err := Parse(path, data)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				var fe *FieldError
				if !errors.As(err, &fe) {
					t.Fatalf("error does not name the file: %v", err)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed, then invalid: %v", err)
		}
		if _, err := c.Redacted(); err != nil {
			t.Fatalf("Redacted: %v", err)
		}
	})
}
