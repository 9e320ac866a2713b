package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qslice/qslice/failover"
)

// FuzzParse: any bytes give a configuration or an error naming the file, never a panic; a
// configuration that parses validates again unchanged, survives a round trip through Redacted,
// and is accepted by every mode: the queue rules of the standalone coordinator and, with a
// consul section, the Consul coordinator's whole validation (the rules cannot drift apart
// again). Seeds: every file in testdata/, the examples and testdata/fuzz/FuzzParse.
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
		if err := failover.ValidateQueues(c.QueueSpecs()); err != nil {
			t.Fatalf("accepted, but standalone refuses: %v", err)
		}
		if c.Consul != nil && c.Consul.TokenFile == "" {
			fc, err := c.FailoverConfig()
			if err == nil {
				err = fc.Validate()
			}
			if err != nil {
				t.Fatalf("accepted, but the Consul coordinator refuses: %v", err)
			}
		}
	})
}
