package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const stream = `{"Action":"run","Package":"github.com/qslice/qslice/a","Test":"TestOK"}
{"Action":"pass","Package":"github.com/qslice/qslice/a","Test":"TestOK","Elapsed":0.1}
{"Action":"run","Package":"github.com/qslice/qslice/a","Test":"TestNeedsConsul"}
{"Action":"output","Package":"github.com/qslice/qslice/a","Test":"TestNeedsConsul","Output":"=== RUN   TestNeedsConsul\n"}
{"Action":"output","Package":"github.com/qslice/qslice/a","Test":"TestNeedsConsul","Output":"    a_test.go:9: Consul not found\n"}
{"Action":"output","Package":"github.com/qslice/qslice/a","Test":"TestNeedsConsul","Output":"--- SKIP: TestNeedsConsul (0.00s)\n"}
{"Action":"skip","Package":"github.com/qslice/qslice/a","Test":"TestNeedsConsul"}
{"Action":"run","Package":"github.com/qslice/qslice/a","Test":"TestPidReuse"}
{"Action":"output","Package":"github.com/qslice/qslice/a","Test":"TestPidReuse","Output":"    a_test.go:20: pid reused\n"}
{"Action":"skip","Package":"github.com/qslice/qslice/a","Test":"TestPidReuse"}
{"Action":"pass","Package":"github.com/qslice/qslice/a","Elapsed":1.5}
`

func run(t *testing.T, in, allow string) (string, bool) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "allow")
	if err := os.WriteFile(path, []byte(allow), 0o644); err != nil {
		t.Fatal(err)
	}
	list, err := readAllow(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r := report{module: "github.com/qslice/qslice/", allow: list, out: &out, output: map[string][]string{}}
	if err := r.read(strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	ok := r.summary()
	return out.String(), ok
}

func TestUnexpectedSkipFails(t *testing.T) {
	out, ok := run(t, stream, "a\\.TestPidReuse # the pid was reused\n")
	if ok {
		t.Fatalf("a skip outside the allow-list passed:\n%s", out)
	}
	for _, want := range []string{
		"SKIP a.TestNeedsConsul: a_test.go:9: Consul not found [NOT ALLOWED]",
		"SKIP a.TestPidReuse: a_test.go:20: pid reused [allowed by line 1: the pid was reused]",
		"ok  \tgithub.com/qslice/qslice/a\t1.500s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestAllowedSkipsPass(t *testing.T) {
	out, ok := run(t, stream, "a\\.Test(PidReuse|NeedsConsul) # both expected here\n")
	if !ok {
		t.Fatalf("allowed skips failed the run:\n%s", out)
	}
}

func TestFailedTestFailsAndShowsItsOutput(t *testing.T) {
	in := `{"Action":"output","Package":"github.com/qslice/qslice/b","Test":"TestBroken","Output":"    b_test.go:3: lost a message\n"}
{"Action":"fail","Package":"github.com/qslice/qslice/b","Test":"TestBroken"}
{"Action":"fail","Package":"github.com/qslice/qslice/b","Elapsed":2}
`
	out, ok := run(t, in, "")
	if ok || !strings.Contains(out, "lost a message") || !strings.Contains(out, "FAILED: b.TestBroken") {
		t.Fatalf("ok=%v, output:\n%s", ok, out)
	}
}

func TestBadAllowListIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "allow")
	os.WriteFile(path, []byte("a\\.TestX\n"), 0o644)
	if _, err := readAllow(path); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Fatalf("entry without a reason: err = %v", err)
	}
}
