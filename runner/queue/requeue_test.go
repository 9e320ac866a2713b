package queue

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRequeueFromShuntAndBad(t *testing.T) {
	root := t.TempDir()
	d := NewDir(filepath.Join(root, "in"), "", "")
	if err := d.Ensure(); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_700_000_000, 0)
	a, _ := d.Enqueue(Meta{Lock: "k"}, []byte("A"), now)
	b, _ := d.Enqueue(Meta{}, []byte("B"), now.Add(time.Second))
	for _, n := range []Name{a, b} {
		if err := d.Claim(n); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Shunt(a, Meta{Lock: "k", Attempts: 2, Enqueued: now}, []byte("A"), errors.New("boom"), now); err != nil {
		t.Fatal(err)
	}
	if err := d.MoveToBad(b, SuffixInFlight, "exhausted", 3, now); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dir, file string }{{d.ShuntDir, a.Base + SuffixReady}, {d.BadDir, b.Base + SuffixBad}} {
		dst, err := Requeue(c.dir, c.file, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(dst) != d.Path {
			t.Errorf("requeued %s to %s, want into %s", c.file, dst, d.Path)
		}
		data, _ := os.ReadFile(dst)
		m, _, err := Decode(data)
		if err != nil || m.Error != "" || m.Attempts != 0 || m.Origin != "" {
			t.Errorf("requeued meta %+v, %v: want error, attempts and origin cleared", m, err)
		}
		if _, err := os.Stat(filepath.Join(c.dir, c.file)); !os.IsNotExist(err) {
			t.Errorf("source %s still there: %v", c.file, err)
		}
	}
	if _, err := os.Stat(filepath.Join(d.BadDir, b.Base+SuffixWhy)); !os.IsNotExist(err) {
		t.Errorf("reason file left behind: %v", err)
	}
	// A Mailman pickle is refused with a message saying why, and left where it is.
	p := "1700000009.5+" + strings.Repeat("d", 40) + SuffixReady
	os.WriteFile(filepath.Join(d.ShuntDir, p), []byte("\x80\x04garbage"), 0o644)
	if _, err := Requeue(d.ShuntDir, p, d.Path, 0); err == nil || !strings.Contains(err.Error(), "only qslice's own") {
		t.Errorf("requeue of a pickle: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.ShuntDir, p)); err != nil {
		t.Errorf("refused file was touched: %v", err)
	}
}
