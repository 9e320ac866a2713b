package glustertest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBed: files written through one mount are read through the other; a cut client's
// operations hang while the other mount works; after the heal it answers again; the teardown
// leaves no namespace and no mount behind, even with a hung operation pending.
func TestBed(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the GlusterFS bed takes a few seconds")
	}
	if err := Available(); err != nil {
		t.Skipf("%s: %v", SkipMessage, err)
	}
	dir := t.TempDir()
	b, err := Start(t.Context(), dir, Options{Clients: 2, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			_ = b.Close()
		}
	})
	if err := os.WriteFile(filepath.Join(b.Mounts[0], "a"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(b.Mounts[1], "a")); err != nil || string(got) != "hello" {
		t.Fatalf("read through mount 1: %q, %v", got, err)
	}

	if err := b.Cut(1); err != nil {
		t.Fatal(err)
	}
	hung := make(chan error, 1)
	go func() {
		f := filepath.Join(b.Mounts[1], "b")
		err := os.WriteFile(f, []byte("x"), 0o644)
		if err == nil {
			_, err = os.ReadDir(b.Mounts[1])
		}
		hung <- err
	}()
	select {
	case err := <-hung:
		t.Fatalf("an operation on the cut mount returned within 2 s (%v): the cut does not hang", err)
	case <-time.After(2 * time.Second):
	}
	if err := os.WriteFile(filepath.Join(b.Mounts[0], "c"), []byte("y"), 0o644); err != nil {
		t.Fatalf("mount 0 while mount 1 is cut: %v", err)
	}
	if err := b.Heal(1); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitAnswering(1, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(b.Mounts[1], "c")); err != nil || string(got) != "y" {
		t.Fatalf("read through mount 1 after the heal: %q, %v", got, err)
	}

	// Teardown with an operation hanging on a cut mount.
	if err := b.Cut(0); err != nil {
		t.Fatal(err)
	}
	stuck := make(chan error, 1)
	go func() { _, err := os.Stat(filepath.Join(b.Mounts[0], "a")); stuck <- err }()
	time.Sleep(500 * time.Millisecond) // let the stat reach the filesystem (nothing is asserted on it)
	start := time.Now()
	closed = true
	if err := b.Close(); err != nil {
		t.Fatalf("teardown: %v", err)
	}
	t.Logf("teardown took %s", time.Since(start).Round(time.Millisecond))
	select {
	case <-stuck: // the hung stat was released (with an error) by the teardown
	case <-time.After(15 * time.Second):
		t.Fatal("a stat on the cut mount still hangs 15 s after the teardown")
	}
	out, _ := run(t.Context(), "ip", "netns", "list")
	if strings.Contains(out, b.id) {
		t.Errorf("namespaces left after teardown:\n%s", out)
	}
	if m := glusterMounts(b.id); len(m) > 0 {
		t.Errorf("mounts left after teardown: %v", m)
	}
	if _, err := os.Stat(dir); err == nil {
		if ents, _ := os.ReadDir(dir); len(ents) > 0 {
			t.Errorf("bed directory not removed: %d entries left", len(ents))
		}
	}
}
