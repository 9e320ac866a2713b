package safefile

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestReadRefusesWhatIsNotASmallRegularFile(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(p("ok"), []byte("hello"), 0o644))
	must(os.WriteFile(p("big"), make([]byte, 100), 0o644))
	must(os.Symlink(p("ok"), p("link")))
	must(os.Symlink("loop", p("loop")))
	must(syscall.Mkfifo(p("fifo"), 0o644))
	must(os.Mkdir(p("dir"), 0o755))
	for _, c := range []struct {
		name string
		want error
		kind string
	}{
		{"ok", nil, ""},
		{"big", ErrTooLarge, ""},
		{"link", ErrNotRegular, "symbolic link"},
		{"loop", ErrNotRegular, "symbolic link"},
		{"fifo", ErrNotRegular, "FIFO"},
		{"dir", ErrNotRegular, "directory"},
		{"missing", os.ErrNotExist, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			done := make(chan struct{})
			var b []byte
			var err error
			go func() { defer close(done); b, err = Read(p(c.name), 64, nil) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Read blocked")
			}
			if c.want == nil {
				if err != nil || string(b) != "hello" {
					t.Fatalf("Read = %q, %v", b, err)
				}
				return
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			var nr *NotRegularError
			if c.kind != "" && (!errors.As(err, &nr) || nr.Kind != c.kind) {
				t.Fatalf("err = %v, want kind %q", err, c.kind)
			}
		})
	}
}

func TestReadReusesTheBuffer(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 1024)
	b, err := Read(p, 0, buf)
	if err != nil || string(b) != "abc" || &b[:1][0] != &buf[:1][0] {
		t.Fatalf("Read = %q, %v (buffer reused: %v)", b, err, err == nil && &b[:1][0] == &buf[:1][0])
	}
}

// Create never writes through a link nor into someone else's file under the name: the name is
// replaced, the target untouched.
func TestCreateReplacesTheNameNeverTheTarget(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"link", "hard"} {
		p := filepath.Join(dir, name)
		var err error
		if name == "link" {
			err = os.Symlink(target, p)
		} else {
			err = os.Link(target, p)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteSync(p, []byte("new"), 0o644); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if b, _ := os.ReadFile(target); string(b) != "keep" {
			t.Fatalf("%s: the target became %q", name, b)
		}
		if b, _ := os.ReadFile(p); string(b) != "new" {
			t.Fatalf("%s: the name holds %q", name, b)
		}
	}
}
